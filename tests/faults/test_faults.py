"""The fault suite: runs across every pattern under worker kills, a Redis restart, a model outage
and dropped Redis connections. Invariants, asserted for every scenario:

- every submitted run reaches a terminal state, and none is lost;
- no completed step is executed twice: the model calls the server answered, per step, never
  exceed the step's attempts (an attempt is only made while the step is not yet completed);
- every output equals the fault-free run's output for the same job.

The figures are printed (pytest -s shows them) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import pytest
import redis

from tests.faults.conftest import SCALE
from tests.faults.workload import Figures, check, jobs, submit, wait_all

KILL_RUNS = int(40 * SCALE)
KILLS = int(6 * SCALE)
RESTART_RUNS = max(600, int(600 * SCALE))
OUTAGE_RUNS = int(40 * SCALE)
DROP_RUNS = int(40 * SCALE)

REPORT: list[Figures] = []


def _key(pattern: str, payload: dict) -> str:
    return json.dumps([pattern, payload], sort_keys=True)


@pytest.fixture(scope="module")
def expected(stack) -> dict[str, object]:
    """The fault-free outputs of every job the scenarios will run."""
    legato = stack["legato"]
    batch = (jobs(KILL_RUNS) + jobs(OUTAGE_RUNS) + jobs(DROP_RUNS)
             + jobs(RESTART_RUNS, ["summarize"]))
    unique = list({_key(p, x): (p, x) for p, x in batch}.values())
    run_ids = submit(legato, unique)
    finals = wait_all(legato, run_ids, timeout=300)
    assert len(finals) == len(run_ids)
    out = {}
    for (pattern, payload), run_id in zip(unique, run_ids, strict=True):
        assert finals[run_id].status == "succeeded", finals[run_id].error
        out[_key(pattern, payload)] = finals[run_id].output
    return out


def _verify(stack, figures: Figures) -> None:
    REPORT.append(figures)
    print("\n" + figures.line())
    for note in figures.notes[:5]:
        print("  ", note)
    assert figures.lost == 0, "runs never reached a terminal state"
    assert figures.duplicated == 0, "completed steps were executed again"
    assert figures.wrong_outputs == 0, figures.notes[:5]


def _run(stack, expected, scenario: str, batch, inject, latency_ms: int | None = None) -> None:
    legato, fake = stack["legato"], stack["fake"]
    fake.reset()
    fake.script(latency_ms=latency_ms)
    run_ids = submit(legato, batch)
    fault_times: list[float] = []
    faults = inject(fault_times)
    finals = wait_all(legato, run_ids, timeout=300)
    figures = check(legato, scenario, batch, run_ids, finals, Counter(fake.calls()), expected,
                    faults, fault_times)
    _verify(stack, figures)


def _in_flight(stack) -> int:
    store = stack["legato"].store
    return int(store.redis.zcard(store.keys.active))


def test_workers_killed_at_random_moments(stack, expected):
    rng = random.Random(7)
    workers = stack["workers"]

    def inject(times: list[float]) -> int:
        while len(times) < KILLS and _in_flight(stack):
            time.sleep(rng.uniform(0.2, 0.8))
            times.append(time.time())
            workers.kill_one(rng)
        return len(times)

    _run(stack, expected, "worker SIGKILL", jobs(KILL_RUNS), inject, latency_ms=400)
    assert REPORT[-1].faults >= KILLS // 2 and REPORT[-1].recovered > 0, "kills hit no step"


def test_redis_restarted_with_hundreds_of_runs_in_flight(stack, expected):
    server = stack["redis"]
    legato = stack["legato"]

    def inject(times: list[float]) -> int:
        in_flight = legato.store.redis.zcard(legato.store.keys.active)
        assert in_flight >= 500, in_flight
        times.append(time.time())
        server.restart()  # SHUTDOWN writes the AOF; the same port and directory come back
        print(f"\nredis restarted with {in_flight} runs in flight")
        return 1

    # Slow replies keep the runs in flight while they are submitted and Redis restarts.
    _run(stack, expected, "redis restart", jobs(RESTART_RUNS, ["summarize"]), inject,
         latency_ms=4000)


def test_model_server_goes_down_and_comes_back(stack, expected):
    fake = stack["fake"]

    def inject(times: list[float]) -> int:
        time.sleep(0.3)
        assert _in_flight(stack) > 0
        times.append(time.time())
        fake.stop()
        time.sleep(2.0)
        fake.start()
        return 1

    _run(stack, expected, "model outage", jobs(OUTAGE_RUNS), inject, latency_ms=200)


def test_redis_connections_dropped(stack, expected):
    admin = redis.Redis.from_url(stack["redis"].url)

    def inject(times: list[float]) -> int:
        dropped = 0
        for _ in range(3):
            time.sleep(0.4)
            assert _in_flight(stack) > 0
            times.append(time.time())
            dropped += admin.client_kill_filter(_type="normal", skipme=True)
            dropped += admin.client_kill_filter(_type="pubsub", skipme=True)
        print(f"\n{dropped} client connections dropped in 3 rounds")
        return len(times)

    _run(stack, expected, "dropped connections", jobs(DROP_RUNS), inject, latency_ms=200)


def test_write_the_figures(stack):
    """Keeps docs/reliability.md's table true to the last run of the suite."""
    if len(REPORT) < 4:
        pytest.fail("the scenarios above did not all run")
    for f in REPORT:
        print(f.line())
    assert all(f.runs > 0 for f in REPORT)

