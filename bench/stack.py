"""The bench's private stack: Redis, the fake model, Legato and raw-Celery workers, /proc readings.

Legato uses Redis database 0, the raw-Celery baseline database 1 — one server, so both pay the
same Redis, and the round-trip counter can tell their traffic apart by database.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from legato.local import processes
from legato.local.redis_server import RedisServer
from legato.queues import DEFAULT_QUEUES

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Stack:
    """Start with `with Stack() as stack:`; workers come and go with `legato_worker()` etc."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="legato-bench-"))
        self.redis = RedisServer()
        self.fake = processes.fake_model(log_dir=self.log_dir)
        self.workers: dict[str, processes.Service] = {}
        self.model_url = ""

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        self.redis.start()
        self.fake.start()
        self.model_url = processes.fake_model_url(self.fake)
        os.environ.update(self.legato_env())  # the producer (this process) reads the same settings
        return self

    def __exit__(self, *exc: Any) -> None:
        for name in list(self.workers):
            self.stop_worker(name)
        self.fake.stop()
        self.redis.stop()

    @property
    def legato_url(self) -> str:
        return self.redis.url  # database 0

    @property
    def raw_url(self) -> str:
        return self.redis.url.rsplit("/", 1)[0] + "/1"

    def legato_env(self) -> dict[str, str]:
        return {
            "LEGATO_REDIS_URL": self.legato_url,
            "LEGATO_MODEL_BASE_URL": self.model_url,
            "LEGATO_PIPELINES_DIR": str(ROOT / "pipelines"),
            "LEGATO_HTTP_TIMEOUT": "120",
            "LEGATO_HTTP_MAX_CONNECTIONS": "1024",
            "BENCH_RAW_REDIS_URL": self.raw_url,
            "PYTHONPATH": str(ROOT),
        }

    def legato_worker(self, concurrency: int, pool: str = "threads", *,
                      queues: list[str] | None = None,
                      env: dict[str, str] | None = None) -> processes.Service:
        """(Re)start the one Legato worker process, on all of Legato's default queues (or
        `queues`), with `env` over the stack's settings."""
        self.stop_worker("legato")
        service = processes.worker(f"legato-c{concurrency}", queues or list(DEFAULT_QUEUES),
                                   env={**self.legato_env(), **(env or {})},
                                   concurrency=concurrency, pool=pool, log_dir=self.log_dir)
        self.workers["legato"] = service.start(timeout=60)
        return service

    def raw_worker(self, concurrency: int, pool: str = "threads") -> processes.Service:
        """(Re)start the one raw-Celery worker process (bench/rawapp.py), same pool and size."""
        from bench.rawapp import QUEUE

        self.stop_worker("raw")
        argv = [sys.executable, "-m", "celery", "-A", "bench.rawapp", "worker", "-P", pool,
                "-c", str(concurrency), "-Q", QUEUE, "-n", f"raw-c{concurrency}@%h",
                "--loglevel", "INFO"]
        service = processes.Service(f"raw-c{concurrency}", argv, env=self.legato_env(),
                                    ready=r"\bready\.", log_dir=self.log_dir)
        self.workers["raw"] = service.start(timeout=60)
        return service

    def stop_worker(self, name: str) -> None:
        service = self.workers.pop(name, None)
        if service is not None:
            service.stop()

    # -- the fake model ----------------------------------------------------------------------

    @property
    def fake_root(self) -> str:
        return self.model_url.removesuffix("/v1")

    def set_latency(self, ms: float) -> None:
        httpx.put(f"{self.fake_root}/_fake/script", json={"latency_ms": ms}).raise_for_status()
        httpx.post(f"{self.fake_root}/_fake/reset").raise_for_status()

    def fake_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.fake_root}/_fake/stats").json()
        return stats


# -- /proc readings --------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
    return out


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(_children(p))
    return tree


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (VmRSS summed)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and its descendants so far."""
    user = system = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11]) / CLK_TCK  # utime, field 14 of stat
            system += int(fields[12]) / CLK_TCK  # stime, field 15
    return user, system


def thread_count(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


class CpuMeter:
    """CPU used by one process tree between start() and stop()."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.user = self.system = 0.0

    def __enter__(self) -> CpuMeter:
        self._start = cpu_seconds(self.pid) if self.pid else (0.0, 0.0)
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: Any) -> None:
        end = cpu_seconds(self.pid) if self.pid else (0.0, 0.0)
        self.user, self.system = end[0] - self._start[0], end[1] - self._start[1]
        self.wall = time.monotonic() - self._t0

    @property
    def total(self) -> float:
        return self.user + self.system
