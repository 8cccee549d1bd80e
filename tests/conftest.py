"""Real parts for every integration test: a private Redis, the fake model server, Celery workers.

Session-scoped: one Redis server on a free port, one fake model process, and two worker processes
— `main` (`legato worker`) on the default queues and `branches` (plain `celery -A legato.workers.app
worker`) on the example branch queues — so routing can be seen landing on another worker.
Tests script the fake model through its admin API and reset it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from legato.client import Legato
from legato.compile import DEFAULT_QUEUES
from legato.local import processes
from legato.local.redis_server import RedisServer
from legato.settings import Settings
from tests.integration.console_server import Console, console_server

ROOT = Path(__file__).resolve().parent.parent
BRANCH_QUEUES = ["legato.branch.billing", "legato.branch.technical"]
T = TypeVar("T")


def charged(store: Any, tenant: str) -> tuple[int, int]:
    """The tokens and runs admission charged to `tenant`, over every bucket of its window."""
    fields = store.redis.hgetall(store.keys.adm_used(tenant))
    return (sum(int(v) for k, v in fields.items() if k.endswith(":t")),
            sum(int(v) for k, v in fields.items() if k.endswith(":r")))


def eventually(what: Callable[[], T], timeout: float = 30.0, every: float = 0.05) -> T:
    """`what()` once it is truthy; AssertionError after `timeout` seconds (a bound on waiting,
    not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


@contextmanager
def environ(env: Mapping[str, str]) -> Iterator[None]:
    """This process's environment with `env` on top (a producer here reads the settings a
    module's own workers have), as it was again afterwards."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def fake_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a running fake model server (a separate process)."""
    service = processes.fake_model(log_dir=tmp_path_factory.mktemp("fake"))
    with service:
        yield processes.fake_model_url(service)


@pytest.fixture(scope="session")
def stack_env(redis_server: RedisServer, fake_model: str) -> dict[str, str]:
    env = {
        "LEGATO_REDIS_URL": redis_server.url,
        "LEGATO_MODEL_BASE_URL": fake_model,
        "LEGATO_PIPELINES_DIR": str(ROOT / "pipelines"),
        "LEGATO_HTTP_TIMEOUT": "5",
        "LEGATO_TOOL_MODULES": "tests.tools",
        "LEGATO_STEP_RETRY_SECONDS": "0.2",  # task retries after 0.2 s, 0.6 s, 1.8 s
        "LEGATO_HTTP_TOOL_HOSTS": "http://127.0.0.1:*",
        "LEGATO_MAX_OUTPUT_BYTES": "100000",
        "LEGATO_STREAM": "1",  # every model step of the suite streams (test_streaming.py)
        "PYTHONPATH": str(ROOT),
    }
    os.environ.update(env)  # the producer (this process) reads the same settings
    return env


@pytest.fixture(scope="session")
def workers(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, processes.Service]]:
    logs = tmp_path_factory.mktemp("workers")
    main = processes.worker("main", list(DEFAULT_QUEUES), env=stack_env, log_dir=logs)
    branches = processes.worker("branches", BRANCH_QUEUES, env=stack_env, plain_celery=True,
                                log_dir=logs)
    with main, branches:
        yield {"main": main, "branches": branches}


@pytest.fixture(scope="module")
def console(stack_env: dict[str, str], workers: dict[str, processes.Service],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """A `legato serve` process on the session's stack, one per test module."""
    with console_server(stack_env, tmp_path_factory.mktemp("console")) as server:
        yield server


@pytest.fixture
def services() -> Iterator[Callable[..., processes.Service]]:
    """Start services (workers, beats) for one test, `start(service, **start_kwargs)`; all
    stopped when it ends."""
    started: list[processes.Service] = []

    def start(service: processes.Service, **kwargs: Any) -> processes.Service:
        started.append(service)  # first: one that fails to start is stopped too
        return service.start(**kwargs)

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def fake(fake_model: str) -> Iterator[FakeModel]:
    admin = FakeModel(fake_model)
    admin.reset()
    yield admin
    admin.reset()


@pytest.fixture
def legato(stack_env: dict[str, str], workers: dict[str, processes.Service]) -> Legato:
    return Legato(Settings.from_env())


class FakeModel:
    """The fake model server's admin API."""

    def __init__(self, base_url: str) -> None:
        self.root = base_url.removesuffix("/v1")

    def script(self, script: dict) -> None:
        httpx.put(f"{self.root}/_fake/script", json=script).raise_for_status()

    def reset(self) -> None:
        self.script({})
        httpx.post(f"{self.root}/_fake/reset").raise_for_status()

    def stats(self) -> dict:
        return httpx.get(f"{self.root}/_fake/stats").json()


# Durability settings short enough for tests: a dead worker's step is dispatched again within
# about lease + sweep seconds, and a run quiet for STALL_SECONDS is recovered.
FAST_RECOVERY = {
    "LEGATO_LEASE_SECONDS": "2",
    "LEGATO_HEARTBEAT_SECONDS": "0.5",
    "LEGATO_SWEEP_SECONDS": "0.5",
    "LEGATO_STALL_SECONDS": "3",
    "LEGATO_MAX_RECOVERIES": "1",
}
DURABLE_QUEUE = "legato.test.durable"


@pytest.fixture(scope="module")
def durable_worker_env(stack_env: dict[str, str]) -> dict[str, str]:
    return {**stack_env, **FAST_RECOVERY}
