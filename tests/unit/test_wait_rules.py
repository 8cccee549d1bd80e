"""The wait step's loading rules, and the park/resume scripts on a real Redis: consume or park,
first signal wins, a timeout never stands in for a signal, unconfirmed resumes are claimed once."""

from __future__ import annotations

import json
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from legato.envelope import RunRecord, StepRecord
from legato.errors import SpecError
from legato.keys import lease_member
from legato.loader import load_pipeline
from legato.store import RunStore
from legato.waits import signal_json

MODELS = 'models:\n  small: {base_url: "http://127.0.0.1:1/v1", model: tiny}\n'


def _load(tmp_path: Path, steps: str) -> SpecError:
    (tmp_path / "models.yaml").write_text(MODELS)
    path = tmp_path / "w.yaml"
    path.write_text("name: w\nsteps:\n" + textwrap.indent(textwrap.dedent(steps), "  "))
    with pytest.raises(SpecError) as info:
        load_pipeline("w", pipelines_dir=tmp_path, models_file=tmp_path / "models.yaml")
    assert info.value.source == str(path)
    return info.value


@pytest.mark.parametrize(("steps", "path", "message"), [
    ("- {kind: wait, id: w}\n", "steps[0]", "a wait needs a `schema`"),
    ("- {kind: wait, id: w, schema: {type: object}, on_timeout: value}\n", "steps[0]",
     "`on_timeout` needs a `timeout`"),
    ("- {kind: wait, id: w, schema: {type: object}, timeout: 5, default: {}}\n", "steps[0]",
     "`default` is the output on timeout: it needs `on_timeout: value`"),
    ("- {kind: wait, id: w, schema: {type: object, required: [ok],\n"
     "   properties: {ok: {type: boolean}}}, timeout: 5,\n"
     "   on_timeout: value, default: {}}\n", "steps[0]", "`default` does not match the schema"),
    ("- {kind: wait, id: w, timeout: 0}\n", "steps[0].timeout", "greater than 0"),
    ("- {kind: wait, id: w, schema: {type: object, allOf: []}}\n", "steps[0].schema",
     "unsupported keyword"),
    ("- {kind: wait, id: w, timeout: 5, on_timeout: jump}\n- {kind: wait, id: x, timeout: 1}\n",
     "steps[0].on_timeout", "a timeout jumps to a later step of the same chain: 'jump' is not "
     "one (later steps: x)"),
    ("- {kind: wait, id: x, timeout: 1}\n- {kind: chain, id: c, steps: [\n"
     "   {kind: wait, id: w, timeout: 5, on_timeout: x}]}\n",
     "steps[1].steps[0].on_timeout", "'x' is not one (later steps: none)"),
    ("- {kind: wait, id: w, timeout: 5, on_timeout: 'not an id'}\n", "steps[0].on_timeout",
     "on_timeout is fail, value or a step id, not 'not an id'"),
])
def test_bad_waits_are_refused_naming_file_and_path(tmp_path, steps, path, message) -> None:
    err = _load(tmp_path, steps)
    assert err.path == path and message in err.reason


def test_a_good_wait_loads_and_its_timeout_action_follows_the_schema(tmp_path) -> None:
    (tmp_path / "models.yaml").write_text(MODELS)
    (tmp_path / "ok.yaml").write_text(
        "name: ok\nsteps:\n  - {kind: wait, id: sleep, timeout: 1}\n"
        "  - {kind: wait, id: gate, schema: {type: object}, timeout: 9}\n")
    spec = load_pipeline("ok", pipelines_dir=tmp_path, models_file=tmp_path / "models.yaml")
    sleep, gate = spec.steps
    assert sleep.timeout_action == "value" and gate.timeout_action == "fail"
    assert gate.schema_ == {"type": "object"}


@pytest.fixture
def runs(redis_server: Any) -> RunStore:
    client = redis_lib.Redis.from_url(redis_server.url, decode_responses=True)
    return RunStore(client, prefix=f"t{uuid.uuid4().hex[:8]}")


def _running_step(runs: RunStore, path: str = "w") -> tuple[str, str]:
    """A run whose step `path` has begun (as a real delivery would), and its lease token."""
    run_id = uuid.uuid4().hex
    runs.create_run(RunRecord(id=run_id, pipeline="p", spec_hash="h", status="queued",
                              input={}, created_at=time.time()))
    record = StepRecord(path=path, status="running", kind="wait", started_at=time.time())
    runs.journal.begin(run_id, record, (), token="tok", signature={"task": "legato.wait"},
                       now=time.time(), lease_seconds=15)
    return run_id, "tok"


def _arrive(runs: RunStore, run_id: str, token: str = "tok", deadline: float | None = None):
    record = StepRecord(path="w", status="waiting", kind="wait", started_at=time.time())
    return runs.waits.arrive(run_id, record, token=token, now=time.time(), deadline=deadline,
                             waits_for="a signal at step w")


def _signal(runs: RunStore, run_id: str, data: Any = 1, **kw: Any):
    now = time.time()
    return runs.waits.signal(run_id, "w", signal_json(data, at=now), now=now, **kw)


def test_parking_moves_the_lease_to_a_parked_entry_and_marks_the_run_waiting(runs) -> None:
    run_id, token = _running_step(runs)
    assert _arrive(runs, run_id, deadline=time.time() + 60).state == "parked"
    member, k = lease_member(run_id, "w"), runs.keys
    assert runs.redis.zscore(k.leases, member) is None and not runs.redis.hexists(k.lease_sig,
                                                                                 member)
    assert json.loads(runs.redis.hget(k.park_sig, member)) == {"task": "legato.wait"}
    assert runs.redis.zscore(k.park_deadlines, member) is not None
    assert runs.redis.zscore(k.active, run_id) is None
    run = runs.get_run(run_id)
    assert run.status == "waiting" and run.awaiting == "a signal at step w"
    assert runs.get_step(run_id, "w").status == "waiting"

    first = _signal(runs, run_id, {"ok": True})
    assert first.state == "resumed" and first.resume == {"task": "legato.wait"}
    assert runs.get_run(run_id).status == "running" and runs.get_run(run_id).awaiting is None
    assert runs.redis.zscore(k.active, run_id) is not None
    assert runs.redis.zscore(k.park_deadlines, member) is None
    second = _signal(runs, run_id, {"ok": False})
    assert second.state == "already" and '"ok":true' in (second.prior or "")


def test_an_early_signal_is_stored_and_taken_by_the_arriving_step(runs) -> None:
    run_id, token = _running_step(runs)
    assert _signal(runs, run_id, {"early": 1}).state == "stored"
    arrival = _arrive(runs, run_id)
    assert arrival.state == "signal" and arrival.signal["data"] == {"early": 1}
    assert runs.get_run(run_id).status == "running"


def test_a_timeout_only_takes_a_parked_step_and_a_finished_run_takes_nothing(runs) -> None:
    run_id, _ = _running_step(runs)
    assert _signal(runs, run_id, only_if_parked=True).state == "not parked"
    assert runs.waits.stored(run_id, "w") is None
    runs.finish_run(run_id, "cancelled")
    assert _signal(runs, run_id).state == "finished"
    assert _signal(runs, "nope").state == "missing"


def test_an_unconfirmed_resume_is_claimed_once_after_the_grace(runs) -> None:
    run_id, _ = _running_step(runs)
    _arrive(runs, run_id)
    _signal(runs, run_id)  # stored and taken, never sent nor confirmed
    assert runs.waits.claim_resumes(now=time.time(), grace_seconds=60) == []
    later = time.time() + 61
    claimed = runs.waits.claim_resumes(now=later, grace_seconds=60)
    assert claimed == [(run_id, "w", {"task": "legato.wait"})]
    assert runs.waits.claim_resumes(now=later, grace_seconds=60) == []  # claimed: not twice
    assert _arrive(runs, run_id).state == "signal"  # the resumed step takes it and clears up
    assert runs.waits.claim_resumes(now=later + 120, grace_seconds=60) == []


def test_a_delivery_that_lost_its_lease_does_not_park(runs) -> None:
    run_id, _ = _running_step(runs)
    assert _arrive(runs, run_id, token="someone else").state == "lost"
    assert runs.get_run(run_id).status == "running"


def test_a_waiting_run_says_what_for_in_its_views() -> None:
    from legato.html_report import render_html
    from legato.waterfall import decision

    run = RunRecord(id="r1", pipeline="p", spec_hash="h", status="waiting", created_at=1.0,
                    awaiting="a signal at step approve", awaiting_since=2.0)
    assert run.waiting is not None and run.waiting.startswith(
        "waiting for a signal at step approve since ")
    assert 'id="run-waiting">waiting for a signal at step approve since' in render_html(run, [])
    parked = StepRecord(path="a/approval[0]", status="waiting", kind="approval",
                        detail={"waiting_for": 'approval of refund({"order": 7})'})
    assert decision(parked) == 'waiting for approval of refund({"order": 7})'
    decided = StepRecord(path="a/approval[0]", status="succeeded", kind="approval", detail={
        "approval": {"decision": "reject", "by": "ana", "reason": "too much"}})
    assert decision(decided) == "rejected by ana: too much"
