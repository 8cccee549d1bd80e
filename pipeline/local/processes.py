"""Child processes of the local stack (workers, the fake model, Flower), started and stopped.

Each runs in its own session with its output in a log file; `ready` is a line the process prints
when it can take work. Used by `make demo`, the tests and the benchmarks.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType


class Service:
    def __init__(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
                 ready: str | None = None, log_dir: Path | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.ready = re.compile(ready) if ready else None
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="legato-"))
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.match: re.Match[str] | None = None

    def start(self, timeout: float = 30.0, *, wait: bool = True) -> Service:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        if self.ready is not None and wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> Service:
        """After `start(wait=False)`: until it says it is ready (several start at once)."""
        if self.ready is not None:
            self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None and self.ready is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.match = self.ready.search(self.log_path.read_text(errors="replace"))
            if self.match:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            assert self.proc is not None
            os.killpg(self.proc.pid, sig)  # the whole group: pool children too

    def stop(self, timeout: float = 15.0) -> None:
        if not self.running():
            return
        assert self.proc is not None
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.running():
            assert self.proc is not None
            self.signal(signal.SIGKILL)
            self.proc.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def fake_model(*, script: str | None = None, log_dir: Path | None = None) -> Service:
    """The fake model server on a free port; after start(), `fake_model_url(service)`."""
    argv = [sys.executable, "-m", "legato.local.fake_model", "--port", "0"]
    if script:
        argv += ["--script", script]
    return Service("fake-model", argv, ready=r"listening on (http://\S+)", log_dir=log_dir)


def fake_model_url(service: Service) -> str:
    assert service.match is not None, "start the service first"
    return service.match.group(1)


def worker(name: str, queues: list[str], *, env: dict[str, str], concurrency: int = 16,
           pool: str = "threads", plain_celery: bool = False,
           log_dir: Path | None = None) -> Service:
    """`legato worker`, or with `plain_celery` the same worker as
    `celery -A legato.workers.app worker`."""
    options = ["-Q", ",".join(queues), "-c", str(concurrency), "-n", f"{name}@%h",
               "--loglevel", "INFO"]
    if plain_celery:
        argv = [sys.executable, "-m", "celery", "-A", "legato.workers.app", "worker", "-P", pool,
                *options]
    else:
        argv = [sys.executable, "-m", "legato.cli", "worker", "--pool", pool, *options]
    return Service(name, argv, env=env, ready=r"\bready\.", log_dir=log_dir)


def flower(port: int, *, env: dict[str, str], basic_auth: str | None = None,
           log_dir: Path | None = None) -> Service:
    """`legato flower` with basic auth given in its environment (never on a command line);
    with no `basic_auth`, FLOWER_BASIC_AUTH must be in `env` (or Flower refuses to start)."""
    argv = [sys.executable, "-m", "legato.cli", "flower", "--port", str(port)]
    if basic_auth:
        env = {**env, "FLOWER_BASIC_AUTH": basic_auth}
    return Service("flower", argv, env=env, ready=r"Visit me at|Registered tasks",
                   log_dir=log_dir)


def console(port: int, *, env: dict[str, str], token: str | None = None, no_auth: bool = False,
            log_dir: Path | None = None) -> Service:
    """`legato serve` on 127.0.0.1:`port`; the token (LEGATO_CONSOLE_TOKEN) goes in its
    environment, never on its command line."""
    argv = [sys.executable, "-m", "legato.cli", "serve", "--port", str(port)]
    if no_auth:
        argv.append("--no-auth")
    if token:
        env = {**env, "LEGATO_CONSOLE_TOKEN": token}
    return Service("console", argv, env=env, ready=r"Uvicorn running on (http://\S+)",
                   log_dir=log_dir)
