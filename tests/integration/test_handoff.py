"""A segment's hand-off, end to end, on a worker with streaming off (the suite's other workers
stream, and a step with run events to flush writes its end at once): each step's end rides the
next step's begin, the last one's the run's finish, and the segment's signature is kept once."""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from legato import Legato, Llm, Pipeline
from legato.local import processes
from tests.conftest import FAST_RECOVERY

QUEUE = "legato.test.handoff"


@pytest.fixture
def quiet_worker(stack_env, tmp_path):
    env = {**stack_env, **FAST_RECOVERY, "LEGATO_STREAM": "0"}
    started: list[processes.Service] = []

    def start(name: str) -> processes.Service:
        service = processes.worker(f"{name}-{uuid.uuid4().hex[:6]}", [QUEUE], env=env,
                                   concurrency=4, log_dir=tmp_path)
        started.append(service.start())
        return service

    yield start
    for service in started:
        service.stop()


def _chain(tag: str, n: int, *, last_queue: str = QUEUE) -> Pipeline:
    steps = [Llm(id="s0", model="small", prompt=f"{tag} from {{{{ input.text }}}}", queue=QUEUE)]
    steps += [Llm(id=f"s{i}", model="small", prompt=f"{tag}: {{{{ outputs.s{i - 1} }}}}",
                  queue=QUEUE if i < n - 1 else last_queue) for i in range(1, n)]
    return Pipeline(name=f"handoff_{tag}", steps=steps)


def _no_leftovers(legato: Legato, run_id: str) -> None:
    store = legato.store
    assert not [m for m in store.redis.zrange(store.keys.leases, 0, -1) if m.startswith(run_id)]
    assert not [f for f in store.redis.hkeys(store.keys.lease_sig) if f.startswith("@")]


def test_a_segment_hands_each_end_to_the_next_begin_and_the_last_to_the_finish(
        legato, fake, quiet_worker):
    quiet_worker("quiet")
    run = legato.wait(legato.submit(_chain("ends", 4), {"text": "x"}), timeout=30)
    assert run.status == "succeeded", run.error
    steps = legato.steps(run.id)
    assert [s.path for s in steps] == ["s0", "s1", "s2", "s3"]
    assert all(s.status == "succeeded" and s.attempt == 1 for s in steps)
    assert len({s.task_id for s in steps}) == 1  # one segment ...
    assert "ends:" in steps[3].output and run.output == steps[3].output  # ... each read the last
    assert legato.store.get_outputs(run.id)["s3"] == run.output  # the last end was written
    _no_leftovers(legato, run.id)


def test_a_segment_that_does_not_end_the_run_writes_its_last_end_itself(
        legato, fake, quiet_worker):
    quiet_worker("quiet")  # s0, s1 here; s2 on legato.llm (the session's worker) ends the run
    run = legato.wait(legato.submit(_chain("mid", 3, last_queue="legato.llm"), {"text": "y"}),
                      timeout=30)
    assert run.status == "succeeded", run.error
    s0, s1, s2 = legato.steps(run.id)
    assert s0.task_id == s1.task_id != s2.task_id
    assert all(s.status == "succeeded" for s in (s0, s1, s2)) and s1.output in s2.output
    _no_leftovers(legato, run.id)


def test_a_segment_whose_worker_dies_mid_way_keeps_the_steps_handed_off(
        legato, fake, quiet_worker):
    fake.script({"faults": [{"kind": "latency", "ms": 1500, "match": {"contains": "die:"}}]})
    victim = quiet_worker("victim")
    run_id = legato.submit(_chain("die", 3), {"text": "z"})
    deadline = time.monotonic() + 15
    while not fake.stats()["by_step"].get(f"{run_id}/s1") and time.monotonic() < deadline:
        time.sleep(0.05)  # s1's call is in flight: s0's end rode s1's begin
    assert legato.store.get_step(run_id, "s0").status == "succeeded"
    victim.signal(signal.SIGKILL)
    quiet_worker("rescuer")  # the sweeper claims s1's lease: the segment's kept signature
    run = legato.wait(run_id, timeout=30)
    assert run.status == "succeeded", run.error
    by_step = fake.stats()["by_step"]
    assert by_step[f"{run_id}/s0"] == 1  # handed off before the kill: not redone
    assert by_step[f"{run_id}/s1"] == 2 and legato.store.get_step(run_id, "s1").attempt == 2
    _no_leftovers(legato, run_id)
