"""Durability: leases, re-dispatch after a worker dies, duplicates, cancel, resume, stalls.

Workers here run with short leases (tests/conftest.py FAST_RECOVERY) on a queue of their own, so
the session's workers never take these steps.
"""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest

from legato import Legato, Llm, Parallel, Pipeline
from legato.envelope import RunRecord
from legato.keys import lease_member
from legato.local import processes
from legato.spec import Aggregate, Vote
from tests.conftest import DURABLE_QUEUE, eventually


def _slow_then_fast(tag: str) -> Pipeline:
    return Pipeline(name=f"durable_{tag}", steps=[
        Llm(id="slow", model="small", prompt=f"slow {tag}", queue=DURABLE_QUEUE),
        Llm(id="after", model="small", prompt=f"after {tag}", queue=DURABLE_QUEUE),
    ])


def _step(legato: Legato, run_id: str, path: str):
    return legato.store.get_step(run_id, path)


def _running(legato: Legato, run_id: str, path: str) -> bool:
    record = _step(legato, run_id, path)
    return record is not None and record.status == "running"


@pytest.fixture
def durable_worker(durable_worker_env, tmp_path, services):
    def start(name: str) -> processes.Service:
        return services(processes.worker(f"{name}-{uuid.uuid4().hex[:6]}", [DURABLE_QUEUE],
                                         env=durable_worker_env, concurrency=8,
                                         log_dir=tmp_path))

    return start


def test_a_step_whose_worker_is_killed_is_dispatched_again_and_finishes(
        legato, fake, durable_worker):
    fake.script({"faults": [{"kind": "latency", "ms": 1500, "match": {"contains": "slow kill"}}]})
    victim = durable_worker("victim")
    run_id = legato.submit(_slow_then_fast("kill"), {})
    eventually(lambda: fake.stats()["by_step"].get(f"{run_id}/slow"))  # the call is in flight
    victim.signal(signal.SIGKILL)
    durable_worker("rescuer")

    run = legato.wait(run_id, timeout=30)
    assert run.status == "succeeded", run.error
    slow = _step(legato, run_id, "slow")
    assert slow.attempt == 2 and not slow.worker.startswith("victim")
    assert int(legato.store.redis.hget(legato.store.keys.run(run_id), "redispatches")) == 1
    by_step = fake.stats()["by_step"]
    assert by_step[f"{run_id}/slow"] == 2  # the killed call, and the one that finished
    assert by_step[f"{run_id}/after"] == 1


def test_a_batch_whose_worker_is_killed_is_sent_again_once_and_redoes_only_the_unfinished(
        legato, fake, durable_worker):
    fake.script({"faults": [{"kind": "latency", "ms": 1500, "every": 2,
                             "match": {"contains": "batch kill"}}]})  # every other call is slow
    victim = durable_worker("victim")
    vote = Parallel(id="v", queue=DURABLE_QUEUE, aggregate=Aggregate(method="concat"),
                    vote=Vote(n=6, step=Llm(id="call", model="small", prompt="batch kill")))
    run_id = legato.submit(Pipeline(name="durable_batch", steps=[vote]), {})
    paths = [f"v/call[{i}]" for i in range(6)]

    def succeeded() -> list[str]:
        return [p for p in paths if getattr(_step(legato, run_id, p), "status", "") == "succeeded"]

    fast = eventually(lambda: succeeded() if len(succeeded()) == 3 else None)  # journaled early
    victim.signal(signal.SIGKILL)
    durable_worker("rescuer")

    run = legato.wait(run_id, timeout=30)
    assert run.status == "succeeded", run.error
    store = legato.store
    assert int(store.redis.hget(store.keys.run(run_id), "redispatches")) == 1  # the batch, once
    by_step = fake.stats()["by_step"]
    assert sorted(by_step[f"{run_id}/{p}"] for p in paths) == [1, 1, 1, 2, 2, 2]
    assert all(by_step[f"{run_id}/{p}"] == 1 for p in fast)  # finished members not redone
    assert not [f for f in store.redis.hkeys(store.keys.lease_sig) if f.startswith("@")]


def test_another_delivery_of_a_running_batch_runs_nothing_and_leaves_no_reference(
        legato, fake, durable_worker):
    # As the stall recovery sends one: the same batch under a task id of its own, its members
    # busy. It must run none of them and leave behind no signature it kept for them.
    fake.script({"faults": [{"kind": "latency", "ms": 2500, "match": {"contains": "busy batch"}}]})
    worker = durable_worker("steady")
    vote = Parallel(id="v", queue=DURABLE_QUEUE, aggregate=Aggregate(method="concat"),
                    vote=Vote(n=3, step=Llm(id="call", model="small", prompt="busy batch")))
    run_id = legato.submit(Pipeline(name="durable_busy_batch", steps=[vote]), {})
    store = legato.store
    ref = eventually(lambda: store.redis.hget(store.keys.lease_sig,
                                              lease_member(run_id, "v/call[0]")))
    assert ref.startswith("@")
    again = uuid.uuid4().hex
    legato.app.signature(json.loads(store.redis.hget(store.keys.lease_sig, ref))).apply_async(
        task_id=again)
    eventually(lambda: f"[{again}] ignored" in worker.log_path.read_text())
    assert store.get_run(run_id).status == "running"  # it came while the members were busy

    run = legato.wait(run_id, timeout=30)
    assert run.status == "succeeded", run.error
    assert [fake.stats()["by_step"][f"{run_id}/v/call[{i}]"] for i in range(3)] == [1, 1, 1]
    assert not [f for f in store.redis.hkeys(store.keys.lease_sig) if f.startswith("@")]


def test_a_healthy_long_step_is_never_started_twice(legato, fake, durable_worker):
    fake.script({"faults": [{"kind": "latency", "ms": 4000, "match": {"contains": "slow long"}}]})
    durable_worker("steady")
    run_id = legato.submit(_slow_then_fast("long"), {})
    eventually(lambda: _running(legato, run_id, "slow"))
    store = legato.store
    member = lease_member(run_id, "slow")
    signature = eventually(lambda: store.redis.hget(store.keys.lease_sig, member))
    if signature.startswith("@"):  # a segment's own signature, kept once for its steps
        signature = store.redis.hget(store.keys.lease_sig, signature)

    time.sleep(2.5)  # longer than the lease: only heartbeats keep it alive
    legato.app.signature(json.loads(signature)).apply_async()  # the broker delivers it again

    run = legato.wait(run_id, timeout=30)
    assert run.status == "succeeded", run.error
    assert _step(legato, run_id, "slow").attempt == 1
    assert fake.stats()["by_step"][f"{run_id}/slow"] == 1


def test_a_duplicated_chord_header_task_neither_fires_the_fan_in_early_nor_twice(
        legato, fake, durable_worker):
    # Celery 5.7's Redis chord records each header task once (by task id and index), and the
    # journal makes the duplicate delivery itself free: it returns the stored result.
    fake.script({"faults": [
        {"kind": "latency", "ms": 300, "match": {"contains": "quick part"}},
        {"kind": "latency", "ms": 3000, "match": {"contains": "slow part"}},
    ]})
    durable_worker("fanin")
    pipeline = Pipeline(name="dup_chord", steps=[Parallel(
        id="fan", queue=DURABLE_QUEUE, aggregate=Aggregate(method="merge"), sections=[
            Llm(id="quick", model="small", prompt="quick part"),
            Llm(id="slow", model="small", prompt="slow part"),
        ])])
    run_id = legato.submit(pipeline, {})
    store = legato.store
    member = lease_member(run_id, "fan/quick")
    signature = eventually(lambda: store.redis.hget(store.keys.lease_sig, member))
    eventually(lambda: getattr(_step(legato, run_id, "fan/quick"), "status", "") == "succeeded")
    legato.app.signature(json.loads(signature)).apply_async()  # quick, delivered twice

    run = legato.wait(run_id, timeout=30)
    assert run.status == "succeeded", run.error
    fan, slow = _step(legato, run_id, "fan"), _step(legato, run_id, "fan/slow")
    assert fan.started_at >= slow.ended_at  # not early
    assert fan.attempt == 1  # not twice
    assert fan.output == {"quick": "[fake:smollm2] quick part", "slow": "[fake:smollm2] slow part"}
    assert fake.stats()["by_step"][f"{run_id}/fan/quick"] == 1


def test_cancel_stops_the_steps_not_yet_begun(legato, fake, durable_worker):
    fake.script({"faults": [{"kind": "latency", "ms": 1500, "match": {"contains": "slow cancel"}}]})
    durable_worker("cancel")
    run_id = legato.submit(_slow_then_fast("cancel"), {})
    eventually(lambda: _running(legato, run_id, "slow"))
    assert legato.cancel(run_id) is True
    assert legato.cancel(run_id) is False

    run = legato.wait(run_id, timeout=10)
    assert run.status == "cancelled" and run.error == "cancelled"
    time.sleep(2.0)  # the slow call finishes; what follows it must not run
    assert legato.status(run_id).status == "cancelled"
    assert f"{run_id}/after" not in fake.stats()["by_step"]


def test_resume_continues_a_failed_run_reusing_completed_steps(legato, fake, durable_worker):
    fake.script({"faults": [{"kind": "status", "code": 400, "times": 1, "body": "bad request",
                             "match": {"contains": "after resume"}}]})
    durable_worker("resume")
    run_id = legato.submit(_slow_then_fast("resume"), {})
    failed = legato.wait(run_id, timeout=15)
    assert failed.status == "failed" and failed.error.startswith("after:")
    assert "bad request" in failed.error

    legato.resume(run_id)
    run = legato.wait(run_id, timeout=15)
    assert run.status == "succeeded", run.error
    assert run.resumes == 1 and run.output == "[fake:smollm2] after resume"
    by_step = fake.stats()["by_step"]
    assert by_step[f"{run_id}/slow"] == 1 and by_step[f"{run_id}/after"] == 2
    assert _step(legato, run_id, "after").attempt == 2
    with pytest.raises(Exception, match="only failed or cancelled runs resume"):
        legato.resume(run_id)


def test_a_run_whose_message_was_lost_is_recovered_then_failed_if_it_stays_stuck(
        legato, fake, durable_worker):
    durable_worker("sweeper")  # its sweeper recovers runs quiet for 3 s, once
    lost = Pipeline(name="lost", steps=[Llm(id="only", model="small", prompt="recover me")])
    spec = legato.load(lost)
    digest = legato.store.put_spec(spec)
    run_id = legato.store.create_run(RunRecord(  # written, but its message never sent
        id=uuid.uuid4().hex, pipeline="lost", spec_hash=digest, status="queued", input={},
        created_at=time.time()))
    run = legato.wait(run_id, timeout=20)
    assert run.status == "succeeded" and run.output == "[fake:smollm2] recover me"

    nowhere = Pipeline(name="stuck", steps=[
        Llm(id="only", model="small", prompt="never", queue="legato.test.nobody")])
    stuck = legato.wait(legato.submit(nowhere, {}), timeout=30)
    assert stuck.status == "failed" and stuck.error.startswith("stalled: no step made progress")
