"""Runs that wait: a `wait` step parks holding no task, a signal resumes it exactly once.

Real workers: the session's (default queues) and one here with a fast sweeper (0.5 s) and a
short resume grace, so timeouts and unconfirmed resumes are seen within a second or two.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from celery import Celery

from legato import Legato, Llm, Pipeline, SignalRefused, Wait
from legato.errors import RunNotFound
from legato.keys import lease_member
from legato.local import processes
from legato.waits import signal_json
from tests.conftest import FAST_RECOVERY, eventually
from tests.integration.test_cli import legato_cli

APPROVAL = {"type": "object", "required": ["approved"], "additionalProperties": False,
            "properties": {"approved": {"type": "boolean"}, "note": {"type": "string"}}}


@pytest.fixture(scope="module")
def fast_sweeper(stack_env, tmp_path_factory):
    """A worker whose sweeper passes every 0.5 s (every worker's sweeper serves every run)."""
    # Its resume claims and timeouts are fast; its stall recovery is not (a queue of resumed
    # runs waiting for a thread is a backlog, not a stall, and later tests here make one).
    env = {**stack_env, **FAST_RECOVERY, "LEGATO_RESUME_GRACE_SECONDS": "1",
           "LEGATO_STALL_SECONDS": "600"}
    service = processes.worker(f"sweeper-{uuid.uuid4().hex[:6]}", ["legato.test.sweeper"],
                               env=env, concurrency=2, log_dir=tmp_path_factory.mktemp("sw"))
    with service:
        yield service


def _approval(tag: str, **wait: Any) -> Pipeline:
    return Pipeline(name=f"waits_{tag}", steps=[
        Llm(id="draft", model="small", prompt=f"draft {tag}"),
        Wait(id="approve", schema=APPROVAL, **wait),
        Llm(id="send", model="small", prompt=f"send {tag}: {{{{ outputs.approve.approved }}}}"),
    ])


def _waiting(legato: Legato, run_id: str) -> bool:
    return legato.status(run_id).status == "waiting"


def _begun(legato: Legato, run_id: str, path: str) -> int:
    return int(legato.store.redis.hget(legato.store.keys.attempts(run_id), path) or 0)


def _legato_tasks(app: Celery) -> list[dict[str, Any]]:
    """Every task the workers are running or hold reserved, asked of the workers themselves."""
    inspect = app.control.inspect(timeout=2.0)
    found: list[dict[str, Any]] = []
    for answer in (inspect.active() or {}, inspect.reserved() or {}):
        for tasks in answer.values():
            found += [t for t in tasks if str(t.get("name", "")).startswith("legato.")]
    return found


def test_a_wait_parks_holding_nothing_and_a_signal_resumes_it(legato, fake):
    run_id = legato.submit(_approval("basic"), {})
    eventually(lambda: _waiting(legato, run_id))
    run = legato.status(run_id)
    assert run.awaiting == "a signal at step approve" and run.awaiting_since
    assert "waiting for a signal at step approve since" in (run.waiting or "")
    record = legato.store.get_step(run_id, "approve")
    assert record is not None and record.status == "waiting"
    assert legato.store.waits.parked(run_id)["approve"]["for"] == "a signal at step approve"
    # The task that parked the step ends a moment after the step reads `waiting`; then none
    # of the run's tasks is active or reserved on any worker.
    eventually(lambda: not [t for t in _legato_tasks(legato.app) if run_id in json.dumps(t)],
               timeout=30, every=0.2)
    assert run_id in [r.id for r in legato.runs(status="waiting", limit=200)]

    reply = legato.signal(run_id, "approve", {"approved": True, "note": "fine"}, by="ana")
    assert reply.state == "resumed"
    done = legato.wait(run_id, timeout=30)
    assert done.status == "succeeded", done.error
    approve = legato.store.get_step(run_id, "approve")
    assert approve.output == {"approved": True, "note": "fine"}
    assert approve.detail["signal"]["by"] == "ana"
    assert fake.stats()["by_step"][f"{run_id}/send"] == 1
    assert done.awaiting is None and done.waiting is None


def test_a_signal_that_comes_early_is_kept_and_consumed_on_arrival(legato, fake):
    fake.script({"faults": [{"kind": "latency", "ms": 1500, "match": {"contains": "draft early"}}]})
    run_id = legato.submit(_approval("early"), {})
    reply = legato.signal(run_id, "approve", {"approved": False})
    assert reply.state == "stored"
    done = legato.wait(run_id, timeout=30)
    assert done.status == "succeeded", done.error
    assert legato.store.get_step(run_id, "approve").output == {"approved": False}
    assert _begun(legato, run_id, "approve") == 1  # it never parked
    assert fake.stats()["by_step"][f"{run_id}/send"] == 1


def test_duplicate_and_concurrent_signals_resume_exactly_once(legato, fake):
    run_id = legato.submit(_approval("dupes"), {})
    eventually(lambda: _waiting(legato, run_id))
    replies: list[str] = []
    barrier = threading.Barrier(8)

    def send(i: int) -> None:
        barrier.wait()
        try:
            replies.append(legato.signal(run_id, "approve", {"approved": True,
                                                             "note": str(i)}).state)
        except SignalRefused as exc:
            replies.append(str(exc))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert replies.count("resumed") == 1
    refused = [r for r in replies if r != "resumed"]
    # A sender whose turn comes after the resumed run has already finished is refused for that.
    assert len(refused) == 7 and all("already signalled" in r or "the run is succeeded" in r
                                     for r in refused), refused
    assert legato.wait(run_id, timeout=30).status == "succeeded"
    with pytest.raises(SignalRefused, match="the run is succeeded"):
        legato.signal(run_id, "approve", {"approved": True})
    assert _begun(legato, run_id, "approve") == 2  # parked once, resumed once
    assert _begun(legato, run_id, "send") == 1
    assert fake.stats()["by_step"][f"{run_id}/send"] == 1


def test_a_signal_whose_sender_died_before_resuming_is_resumed_by_the_sweeper(
        legato, fake, fast_sweeper):
    # The window between storing the signal and sending the parked step, hit on purpose: the
    # atomic signal script runs (as a sender killed right after it would leave things), the
    # send never happens.
    run_id = legato.submit(_approval("orphan"), {})
    eventually(lambda: _waiting(legato, run_id))
    now = time.time()
    taken = legato.store.waits.signal(run_id, "approve", signal_json({"approved": True}, at=now),
                                      now=now)
    assert taken.state == "resumed" and taken.resume is not None  # ...and dropped on the floor
    assert legato.status(run_id).status == "running"
    done = legato.wait(run_id, timeout=30)
    assert done.status == "succeeded", done.error
    assert _begun(legato, run_id, "approve") == 2
    assert fake.stats()["by_step"][f"{run_id}/send"] == 1
    member = lease_member(run_id, "approve")
    assert legato.store.redis.zscore(legato.store.keys.park_resuming, member) is None
    assert not legato.store.redis.hexists(legato.store.keys.park_sig, member)


def test_timeouts_fail_give_a_default_or_end_a_sleep(legato, fake, fast_sweeper):
    failing = legato.submit(_approval("late", timeout=0.5), {})
    valued = legato.submit(_approval("default", timeout=0.5, on_timeout="value",
                                     default={"approved": False, "note": "no answer"}), {})
    sleeper = legato.submit(Pipeline(name="waits_sleep", steps=[
        Wait(id="nap", timeout=0.5),
        Llm(id="after", model="small", prompt="after the nap")]), {})

    failed = legato.wait(failing, timeout=30)
    assert failed.status == "failed" and "approve: timed out: no signal within 0.5s" in failed.error
    assert fake.stats()["by_step"].get(f"{failing}/send") is None
    with pytest.raises(SignalRefused, match="the run is failed"):
        legato.signal(failing, "approve", {"approved": True})

    ok = legato.wait(valued, timeout=30)
    assert ok.status == "succeeded", ok.error
    approve = legato.store.get_step(valued, "approve")
    assert approve.output == {"approved": False, "note": "no answer"}
    assert approve.detail["timed_out"] is True

    slept = legato.wait(sleeper, timeout=30)
    assert slept.status == "succeeded", slept.error
    assert legato.store.get_step(sleeper, "nap").output is None


def test_a_timeout_can_jump_over_the_steps_between(legato, fake, fast_sweeper):
    pipeline = Pipeline(name="waits_jump", steps=[
        Llm(id="draft", model="small", prompt="draft jump"),
        Wait(id="approve", schema=APPROVAL, timeout=0.5, on_timeout="remind"),
        Llm(id="send", model="small", prompt="send jump"),
        Llm(id="log", model="small", prompt="log jump"),
        Llm(id="remind", model="small", prompt="remind jump: nobody answered"),
    ])
    run = legato.wait(legato.submit(pipeline, {}), timeout=30)
    assert run.status == "succeeded", run.error
    paths = {s.path for s in legato.steps(run.id)}
    assert paths == {"draft", "approve", "remind"}
    assert legato.store.get_step(run.id, "approve").detail["jumped_to"] == "remind"
    calls = fake.stats()["by_step"]
    assert f"{run.id}/send" not in calls and calls[f"{run.id}/remind"] == 1


def test_a_signal_before_the_timeout_wins_over_it(legato, fake, fast_sweeper):
    run_id = legato.submit(_approval("beat", timeout=3), {})
    eventually(lambda: _waiting(legato, run_id))
    legato.signal(run_id, "approve", {"approved": True})
    assert legato.wait(run_id, timeout=30).status == "succeeded"
    time.sleep(0)  # the deadline's entry went with the signal
    member = lease_member(run_id, "approve")
    assert legato.store.redis.zscore(legato.store.keys.park_deadlines, member) is None


def test_bad_signals_are_refused_clearly_and_change_nothing(legato, fake):
    run_id = legato.submit(_approval("bad"), {})
    eventually(lambda: _waiting(legato, run_id))
    before = legato.store.redis.hgetall(legato.store.keys.run(run_id))

    with pytest.raises(RunNotFound, match="no run 'no-such-run'"):
        legato.signal("no-such-run", "approve", {"approved": True})
    with pytest.raises(SignalRefused, match=r"no step 'nope' in pipeline 'waits_bad' "
                                            r"\(its waits and agents: approve\)"):
        legato.signal(run_id, "nope", {"approved": True})
    with pytest.raises(SignalRefused, match="step draft refused: it is a llm step, not a wait"):
        legato.signal(run_id, "draft", {"approved": True})
    with pytest.raises(SignalRefused, match="approved"):
        legato.signal(run_id, "approve", {"approved": "yes"})
    with pytest.raises(SignalRefused, match="extra|not permitted|unknown"):
        legato.signal(run_id, "approve", {"approved": True, "amount": 5})

    assert legato.store.redis.hgetall(legato.store.keys.run(run_id)) == before
    assert legato.store.waits.stored(run_id, "approve") is None
    assert legato.store.get_step(run_id, "approve").status == "waiting"

    assert legato.cancel(run_id)
    assert not legato.store.redis.hexists(legato.store.keys.park_sig,
                                          lease_member(run_id, "approve"))
    with pytest.raises(SignalRefused, match="the run is cancelled"):
        legato.signal(run_id, "approve", {"approved": True})
    assert legato.status(run_id).status == "cancelled"


@pytest.mark.timeout(900)  # 1,000 runs on a shared 2-core machine: slow when it is loaded
def test_many_waiting_runs_hold_no_task_and_all_resume(legato, fake):
    pipeline = legato.load(Pipeline(name="waits_many", steps=[
        Wait(id="gate", schema={"type": "object", "properties": {"n": {"type": "integer"}}})]))
    ids = [legato.submit(pipeline, {}) for _ in range(1000)]

    def statuses() -> list[str]:
        pipe = legato.store.redis.pipeline(transaction=False)
        for run_id in ids:
            pipe.hget(legato.store.keys.run(run_id), "status")
        return pipe.execute()

    # (a loaded 2-core machine takes a while to begin 1,000 tasks: no timing is asserted)
    eventually(lambda: statuses() == ["waiting"] * len(ids), timeout=800, every=1.0)
    parked = legato.store.redis.hmget(legato.store.keys.park_sig,
                                      [lease_member(r, "gate") for r in ids])
    assert all(parked)
    # 1,000 runs waiting: no task runs, none reserved (a task that just parked its run may still
    # be returning: it is given the moment it needs)
    eventually(lambda: _legato_tasks(legato.app) == [], timeout=60, every=0.5)

    with ThreadPoolExecutor(8) as pool:
        states = list(pool.map(lambda i: legato.signal(ids[i], "gate", {"n": i}).state,
                               range(len(ids))))
    assert states == ["resumed"] * len(ids)
    for i, run_id in enumerate(ids):
        done = legato.wait(run_id, timeout=120)
        assert done.status == "succeeded" and done.output == {"n": i}, done.error


def test_the_cli_and_the_public_task_signal_and_show_waiting(legato, fake, stack_env, tmp_path):
    run_id = legato.submit(_approval("cli"), {})
    eventually(lambda: _waiting(legato, run_id))

    listed = legato_cli("runs", "--status", "waiting", "--json", "--limit", "200", env=stack_env)
    assert run_id in [r["id"] for r in json.loads(listed.stdout)]
    status = legato_cli("status", run_id, env=stack_env)
    assert "waiting for a signal at step approve since" in status.stdout
    show = legato_cli("show", run_id, env=stack_env)
    assert "waiting" in show.stdout and "approve" in show.stdout

    refused = legato_cli("signal", run_id, "approve", "--data", '{"approved": 1}',
                         env=stack_env)
    assert refused.returncode == 2 and "approved" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    bad_json = legato_cli("signal", run_id, "approve", "--data", "{nope", env=stack_env)
    assert bad_json.returncode == 2 and "--data is not JSON" in bad_json.stderr

    payload = tmp_path / "ok.json"
    payload.write_text('{"approved": true, "note": "from a file"}')
    sent = legato_cli("signal", run_id, "approve", "--data", f"@{payload}", "--by", "cli",
                      env=stack_env)
    assert sent.returncode == 0, sent.stderr
    assert f"signalled {run_id} step approve: resumed" in sent.stdout
    assert legato.wait(run_id, timeout=30).status == "succeeded"

    other = legato.submit(_approval("task"), {})
    eventually(lambda: _waiting(legato, other))
    bare = Celery(broker=stack_env["LEGATO_REDIS_URL"], backend=stack_env["LEGATO_REDIS_URL"])
    refused_task = bare.send_task("legato.signal", kwargs={
        "run_id": other, "step": "approve", "data": {"approved": "maybe"}})
    with pytest.raises(Exception, match="approved"):
        refused_task.get(timeout=30)
    assert not refused_task.traceback
    reply = bare.send_task("legato.signal", kwargs={
        "run_id": other, "step": "approve", "data": {"approved": True}, "by": "flower"})
    assert reply.get(timeout=30) == {"run_id": other, "path": "approve", "state": "resumed"}
    assert legato.wait(other, timeout=30).status == "succeeded"
    assert legato.store.get_step(other, "approve").detail["signal"]["by"] == "flower"
