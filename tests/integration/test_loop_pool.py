"""Legato's threads pool (workers/pool.py): a segment's whole task runs on the transport's loop.

Each test runs a worker of its own on a Redis database no other worker uses, so its queues,
its unacked index and its threads are the test's alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import redis

from legato import Legato, Llm, Pipeline
from legato.local import processes
from legato.queues import DEFAULT_QUEUES
from legato.settings import Settings
from tests.conftest import environ, eventually

CONCURRENCY = 8


def _own_db(redis_server, db: int) -> str:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


def _chain(name: str) -> Pipeline:
    return Pipeline(name=name, steps=[
        Llm(id="a", model="small", prompt="Start from {{ input.text }}"),
        Llm(id="b", model="small", prompt="Go on: {{ outputs.a }}")])


def _threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


@pytest.mark.parametrize("on_loop", [True, False], ids=["on the loop", "off"])
def test_segments_in_flight_hold_no_pool_thread(stack_env, redis_server, services, fake,
                                                tmp_path, on_loop):
    env = {**stack_env, "LEGATO_REDIS_URL": _own_db(redis_server, 11),
           "LEGATO_STEPS_ON_LOOP": "1" if on_loop else "0"}
    worker = services(processes.worker("pool", list(DEFAULT_QUEUES), env=env,
                                       concurrency=CONCURRENCY, log_dir=tmp_path), timeout=60)
    with environ(env):
        legato = Legato(Settings.from_env())
    assert worker.pid is not None
    before = _threads(worker.pid)
    fake.script({"latency_ms": 1500})
    ids = [legato.submit(_chain("pool_chain"), {"text": f"job {i}"})
           for i in range(CONCURRENCY)]
    eventually(lambda: fake.stats()["in_flight"] == CONCURRENCY)
    during = _threads(worker.pid)
    runs = [legato.wait(i, timeout=60) for i in ids]

    assert all(r.status == "succeeded" for r in runs), [r.error for r in runs]
    if on_loop:  # the consumer handed each task to the loop: no pool thread was started
        assert during - before < CONCURRENCY // 2
    else:  # each task held one of Celery's threads while the loop ran its calls
        assert during - before >= CONCURRENCY


def test_a_warm_shutdown_lets_a_segment_on_the_loop_finish(stack_env, redis_server, services,
                                                           fake, tmp_path):
    url = _own_db(redis_server, 12)
    env = {**stack_env, "LEGATO_REDIS_URL": url}
    worker = services(processes.worker("pool-stop", list(DEFAULT_QUEUES), env=env,
                                       concurrency=CONCURRENCY, log_dir=tmp_path), timeout=60)
    with environ(env):
        legato = Legato(Settings.from_env())
    fake.script({"latency_ms": 2000})
    run_id = legato.submit(_chain("pool_stop"), {"text": "stop"})
    eventually(lambda: fake.stats()["by_step"].get(f"{run_id}/a") == 1)

    worker.stop(timeout=30)  # SIGTERM while the first call is in flight

    run = legato.status(run_id)
    assert run.status == "succeeded", run.error
    assert [s.path for s in legato.steps(run_id)] == ["a", "b"]
    client = redis.Redis.from_url(url)
    assert client.hlen("unacked") == 0  # acked before the worker went: nothing to redeliver


def test_concurrency_bounds_the_tasks_on_the_loop_whatever_the_prefetch(stack_env, redis_server,
                                                                         services, fake,
                                                                         tmp_path):
    env = {**stack_env, "LEGATO_REDIS_URL": _own_db(redis_server, 13)}
    # plain Celery, so the prefetch can be raised: 3 messages reserved for each of 4 threads
    argv = [sys.executable, "-m", "celery", "-A", "legato.workers.app", "worker", "-P",
            "threads", "-c", "4", "--prefetch-multiplier", "3", "-Q", ",".join(DEFAULT_QUEUES),
            "-n", "pool-bound@%h", "--loglevel", "INFO"]
    services(processes.Service("pool-bound", argv, env=env, ready=r"\bready\.",
                               log_dir=tmp_path), timeout=60)
    with environ(env):
        legato = Legato(Settings.from_env())
    fake.script({"latency_ms": 600})
    ids = [legato.submit(_chain("pool_bound"), {"text": f"job {i}"}) for i in range(12)]
    runs = [legato.wait(i, timeout=60) for i in ids]

    assert all(r.status == "succeeded" for r in runs), [r.error for r in runs]
    assert fake.stats()["max_in_flight"] == 4  # -c of them at once, never the 12 reserved
