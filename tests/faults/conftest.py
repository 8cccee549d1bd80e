"""A stack of its own for the fault suite: it kills workers and restarts Redis and the model.

Sizes scale with LEGATO_FAULT_SCALE (default 1: within CI's time; try 5 on demand).
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from legato import Legato
from legato.compile import DEFAULT_QUEUES
from legato.local import processes
from legato.local.net import free_port
from legato.local.redis_server import RedisServer
from legato.settings import Settings
from tests.conftest import BRANCH_QUEUES, ROOT, environ
from tests.faults.workload import SCRIPT

SCALE = float(os.environ.get("LEGATO_FAULT_SCALE", "1"))
RECOVERY = {
    "LEGATO_LEASE_SECONDS": "2",
    "LEGATO_HEARTBEAT_SECONDS": "0.5",
    "LEGATO_SWEEP_SECONDS": "0.5",
    "LEGATO_STALL_SECONDS": "10",
    "LEGATO_MAX_RECOVERIES": "5",
    "LEGATO_HTTP_TIMEOUT": "10",
}


class FakeModelProcess:
    """The fake model on a fixed port, so it can go down and come back at the same address."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.service: processes.Service | None = None
        self.calls_before: dict[str, int] = {}  # counts from earlier lives of the process
        self.current: dict = SCRIPT

    def start(self) -> None:
        """Up with the script in force from its first request: a process that came back and
        answered a moment without its rules (the router's reply) would change outputs."""
        script = self.log_dir / "fake-model-script.json"
        script.write_text(json.dumps(self.current))
        argv = [sys.executable, "-m", "legato.local.fake_model", "--port", str(self.port),
                "--script", str(script)]
        self.service = processes.Service("fake-model", argv, ready="listening on",
                                         log_dir=self.log_dir).start()

    def script(self, latency_ms: int | None = None) -> None:
        self.current = SCRIPT if latency_ms is None else {**SCRIPT, "latency_ms": latency_ms}
        httpx.put(f"{self.url[:-3]}/_fake/script", json=self.current).raise_for_status()

    def stop(self) -> None:
        for tag, n in self.stats()["by_step_ok"].items():
            self.calls_before[tag] = self.calls_before.get(tag, 0) + n
        assert self.service is not None
        self.service.stop()

    def stats(self) -> dict:
        return httpx.get(f"{self.url[:-3]}/_fake/stats", timeout=10).json()

    def calls(self) -> dict[str, int]:
        """Model calls that completed (answered 200), per step, across restarts."""
        now = self.stats()["by_step_ok"]
        return {t: now.get(t, 0) + self.calls_before.get(t, 0)
                for t in set(now) | set(self.calls_before)}

    def reset(self) -> None:
        httpx.post(f"{self.url[:-3]}/_fake/reset").raise_for_status()
        self.calls_before = {}


class Workers:
    """A pool of worker processes the suite may kill and replace at will."""

    def __init__(self, env: dict[str, str], log_dir: Path, count: int = 3) -> None:
        self.env = env
        self.log_dir = log_dir
        self.live: list[processes.Service] = []
        self.started = 0
        for _ in range(count):
            self.add()

    def add(self, *, wait: bool = True) -> processes.Service:
        self.started += 1
        queues = [*DEFAULT_QUEUES, *BRANCH_QUEUES]
        service = processes.worker(f"w{self.started}", queues, env=self.env, concurrency=32,
                                   log_dir=self.log_dir)
        self.live.append(service.start(timeout=60, wait=wait))
        return service

    def kill_one(self, rng: random.Random) -> None:
        """SIGKILL a random worker (its whole process group) and start a replacement."""
        victim = self.live.pop(rng.randrange(len(self.live)))
        victim.signal(9)
        self.add(wait=False)

    def stop(self) -> None:
        for service in self.live:
            service.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    logs = tmp_path_factory.mktemp("faults")
    with RedisServer() as redis_server:
        fake = FakeModelProcess(logs)
        fake.start()
        env = {**RECOVERY, "LEGATO_REDIS_URL": redis_server.url, "LEGATO_MODEL_BASE_URL": fake.url,
               "LEGATO_PIPELINES_DIR": str(ROOT / "pipelines"), "PYTHONPATH": str(ROOT),
               "LEGATO_MODELS_FILE": str(Path(__file__).parent / "models.yaml")}
        workers = Workers(env, logs)
        with environ(env):
            try:
                yield {"redis": redis_server, "fake": fake, "workers": workers, "env": env,
                       "legato": Legato(Settings.from_env())}
            finally:
                workers.stop()
                if fake.service is not None:
                    fake.service.stop()
