"""The journal's and the store's Lua scripts on a real Redis: they read stored records by decoding
them (any spacing, any key order, an older writer), and take the run states from envelope.py."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, get_args

import pytest
import redis as redis_lib

from legato import journal, store
from legato.envelope import (
    RESUMABLE,
    RUN_STATUSES,
    STEP_STATUSES,
    TERMINAL,
    UNFINISHED,
    RunRecord,
    RunStatus,
    StepRecord,
)
from legato.html_report import COLOURS
from legato.lua import lua_set
from legato.report import STATUS_STYLE
from legato.store import RunStore


@pytest.fixture
def runs(redis_server: Any) -> RunStore:
    client = redis_lib.Redis.from_url(redis_server.url, decode_responses=True)
    return RunStore(client, prefix=f"t{uuid.uuid4().hex[:8]}")


def new_run(runs: RunStore, status: str = "queued") -> str:
    run_id = uuid.uuid4().hex
    runs.create_run(RunRecord(id=run_id, pipeline="p", spec_hash="h", status="queued",
                              input={"x": 1}, created_at=time.time()))
    if status != "queued":
        runs.redis.hset(runs.keys.run(run_id), "status", status)
    return run_id


def begin(runs: RunStore, run_id: str, path: str = "a", token: str = "me") -> journal.Begin:
    record = StepRecord(path=path, status="running", kind="llm", started_at=time.time())
    return runs.journal.begin(run_id, record, (), token=token, signature={"task": "t"},
                              now=time.time(), lease_seconds=15)


def test_a_begin_says_whether_someone_watches_the_run(runs: RunStore) -> None:
    from legato import events

    run_id = new_run(runs)
    assert begin(runs, run_id, path="a").watched is False
    events.watching(runs.redis, runs.keys.watched(run_id))
    assert begin(runs, run_id, path="b").watched is True
    assert 0 < runs.redis.ttl(runs.keys.watched(run_id)) <= events.WATCH_SECONDS


def succeeded(path: str = "a") -> StepRecord:
    return StepRecord(path=path, status="succeeded", kind="llm", output={"answer": 42},
                      started_at=1764579398.123456, ended_at=1764579399.5,
                      detail={"model_calls": [{"model": "m", "attempts": [
                          {"status": 200, "seconds": 0.25}], "outcome": "ok"}]})


def layouts(record: StepRecord) -> dict[str, str]:
    data = record.model_dump(mode="json")
    return {
        "pydantic": record.model_dump_json(),
        "indented": json.dumps(data, indent=2),
        "reversed": json.dumps(dict(reversed(list(data.items())))),
        "spaced and sorted": json.dumps(data, sort_keys=True, separators=(" , ", " : ")),
    }


@pytest.mark.parametrize("layout", ["pydantic", "indented", "reversed", "spaced and sorted"])
def test_a_succeeded_record_is_memoized_whatever_its_json_layout(runs: RunStore,
                                                                  layout: str) -> None:
    run_id = new_run(runs)
    runs.redis.hset(runs.keys.steps(run_id), "a", layouts(succeeded())[layout])
    seen = begin(runs, run_id)
    assert seen.state == "done" and seen.prior is not None
    assert seen.prior.output == {"answer": 42} and seen.prior.ok
    assert seen.prior.model_calls[0].attempts[0].status == 200  # typed on the way in


@pytest.mark.parametrize("layout", ["pydantic", "indented", "reversed", "spaced and sorted"])
def test_a_running_record_under_a_live_lease_is_busy_whatever_its_layout(runs: RunStore,
                                                                         layout: str) -> None:
    run_id = new_run(runs, "running")
    running = StepRecord(path="a", status="running", kind="llm", started_at=time.time())
    runs.redis.hset(runs.keys.steps(run_id), "a", layouts(running)[layout])
    member = f"{run_id}|a"
    runs.redis.zadd(runs.keys.leases, {member: time.time() + 60})
    runs.redis.hset(runs.keys.lease_owner, member, "another delivery")
    assert begin(runs, run_id, token="me").state == "busy"
    assert begin(runs, run_id, token="another delivery").state == "go"  # its own lease


def test_status_text_inside_a_record_is_not_its_status(runs: RunStore) -> None:
    # A failed step whose detail holds a nested `"status":"succeeded"` (a tool's answer, say):
    # matching bytes would have taken it for done.
    run_id = new_run(runs)
    failed = StepRecord(path="a", status="failed", error="boom",
                        detail={"tool": {"status": "succeeded"}})
    raw = failed.model_dump_json()
    assert '"status":"succeeded"' in raw
    runs.redis.hset(runs.keys.steps(run_id), "a", raw)
    assert begin(runs, run_id).state == "go"


def test_a_record_that_does_not_decode_counts_as_none(runs: RunStore) -> None:
    run_id = new_run(runs)
    runs.redis.hset(runs.keys.steps(run_id), "a", '{"status":"succeeded", oops')
    assert begin(runs, run_id).state == "go"


def test_the_running_record_gets_its_attempt_and_reads_back_whole(runs: RunStore) -> None:
    run_id = new_run(runs)
    first = begin(runs, run_id)
    stored = runs.get_step(run_id, "a")
    assert first.state == "go" and first.attempt == 1 and first.input == {"x": 1}
    assert stored is not None and stored.attempt == 1 and stored.status == "running"
    assert json.loads(runs.redis.hget(runs.keys.steps(run_id), "a"))["attempt"] == 1
    second = begin(runs, run_id)  # this very delivery again (a dropped connection)
    assert second.attempt == 2 and runs.get_step(run_id, "a").attempt == 2  # type: ignore[union-attr]
    record = succeeded().model_copy(update={"attempt": 2})
    runs.journal.end(run_id, record, ("a",), token="me", now=time.time())
    again = begin(runs, run_id)
    assert again.state == "done" and again.prior == record
    assert runs.get_outputs(run_id) == {"a": {"answer": 42}}


# -- the run states, listed once ------------------------------------------------------------


def lua_table(script: str, name: str) -> set[str]:
    line = re.search(rf"^local {name} = \{{(.*)\}}$", script, re.M)
    assert line is not None, f"{name} is not made in the script"
    return set(re.findall(r"\['([^']+)'\] = true", line.group(1)))


def test_the_scripts_take_their_states_from_envelope() -> None:
    assert lua_table(store._FINISH, "TERMINAL") == TERMINAL
    assert lua_table(journal._BEGIN, "UNFINISHED") == UNFINISHED
    for script in (store._FINISH, journal._BEGIN):  # and keep no copy of their own
        body = re.sub(r"^local [A-Z]+ = \{.*\}$", "", script, flags=re.M)
        assert not {s for s in TERMINAL if f"'{s}'" in body} - {"succeeded"}, script


def test_the_states_are_one_list() -> None:
    assert set(get_args(RunStatus)) == RUN_STATUSES == TERMINAL | UNFINISHED
    assert not TERMINAL & UNFINISHED and RESUMABLE < TERMINAL
    for done in TERMINAL:
        assert RunRecord(id="r", pipeline="p", spec_hash="h", status=done, created_at=0).done
    for going in UNFINISHED:
        assert not RunRecord(id="r", pipeline="p", spec_hash="h", status=going,
                             created_at=0).done
    # The views colour every state there is.
    assert set(STATUS_STYLE) >= RUN_STATUSES | STEP_STATUSES and set(STATUS_STYLE) <= set(COLOURS)


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_a_terminal_run_stays_terminal_and_begins_nothing(runs: RunStore, status: str) -> None:
    run_id = new_run(runs, status)
    seen = begin(runs, run_id)
    assert (seen.state, seen.run_status) == ("stopped", status)
    assert runs.finish_run(run_id, "failed", error="late") is False
    assert runs.get_run(run_id).status == status


@pytest.mark.parametrize("status", sorted(UNFINISHED))
def test_an_unfinished_run_finishes_once(runs: RunStore, status: str) -> None:
    run_id = new_run(runs, status)
    assert begin(runs, run_id).state == "go"
    assert runs.finish_run(run_id, "cancelled", error="stop") is True
    assert runs.finish_run(run_id, "succeeded") is False
    assert runs.get_run(run_id).status == "cancelled"


def test_finishing_means_a_terminal_state(runs: RunStore) -> None:
    with pytest.raises(ValueError, match="not a terminal state"):
        runs.finish_run(new_run(runs), "running")  # type: ignore[arg-type]


def test_only_plain_names_go_into_lua() -> None:
    assert lua_set("S", ["b", "a"]) == "local S = {['a'] = true, ['b'] = true}\n"
    with pytest.raises(ValueError):
        lua_set("S", ["it's"])


def test_the_sweeper_leaves_a_run_that_finished_since_it_was_claimed(runs: RunStore) -> None:
    from legato.settings import Settings
    from legato.workers.lifeline import Sweeper

    run_id = new_run(runs)
    assert runs.claim_stalled(quiet_for=-60) == [run_id]  # quiet, so claimed for recovery ...
    runs.finish_run(run_id, "succeeded", output="done")  # ... and then it finished anyway
    sweeper = Sweeper(runs, app=None, settings=Settings())  # type: ignore[arg-type]
    assert sweeper._recover(run_id) == "finished"  # nothing sent: there is no app to send with
    assert runs.redis.hget(runs.keys.run(run_id), "recoveries") is None


def test_legato_runs_names_the_states_it_knows() -> None:
    from typer.testing import CliRunner

    from legato.cli import app

    result = CliRunner().invoke(app, ["runs", "--status", "done"])
    assert result.exit_code == 2
    assert "no run state 'done'" in result.output
    assert all(state in result.output for state in RUN_STATUSES)


def test_the_sweeper_prunes_the_runs_index_every_prune_seconds(runs: RunStore) -> None:
    from legato.settings import Settings
    from legato.workers.lifeline import Sweeper

    def expired() -> str:  # an index entry whose run's keys the TTL already took
        run_id = new_run(runs)
        runs.redis.zadd(runs.keys.runs, {run_id: time.time() - 120})
        runs.redis.delete(runs.keys.run(run_id))
        return run_id

    settings = Settings(run_ttl=60, prune_seconds=3600)
    sweeper = Sweeper(runs, app=None, settings=settings)  # type: ignore[arg-type]
    first = expired()
    assert sweeper._prune() == 1  # the first pass prunes ...
    assert runs.redis.zscore(runs.keys.runs, first) is None
    second = expired()
    assert sweeper._prune() == 0  # ... the next one only after LEGATO_PRUNE_SECONDS
    assert runs.redis.zscore(runs.keys.runs, second) is not None
    sweeper.settings = Settings(run_ttl=60, prune_seconds=0)
    assert sweeper._prune() == 1
    keeps = Sweeper(runs, app=None, settings=Settings(run_ttl=0))  # type: ignore[arg-type]
    assert keeps._prune() == 0  # LEGATO_RUN_TTL=0: nothing expires, nothing to prune


def test_one_trip_runs_each_part_on_its_own_keys_and_args(runs: RunStore) -> None:
    from legato.lua import one_trip, one_trip_call

    echo = "return {#KEYS, #ARGV, KEYS[1] or '', ARGV[#ARGV] or ''}"
    script = runs.redis.register_script(one_trip(echo, "return nil", echo))
    reply = script(**one_trip_call([(["k1", "k2"], ["a", "b", "c"]), ([], []), (["k3"], ["z"])]))
    assert reply == [[2, 3, "k1", "c"], 0, [1, 1, "k3", "z"]]


def test_a_hand_off_ends_one_step_and_begins_the_next_in_one_call(runs: RunStore) -> None:
    run_id = new_run(runs)
    assert begin(runs, run_id, "a", token="t1").state == "go"
    done = succeeded("a")
    ending = runs.journal.end_part(run_id, done, ("a",), token="t1", now=time.time())
    keep = runs.journal.keep_signature("@@seg", {"task": "legato.segment"})
    nxt = StepRecord(path="b", status="running", kind="llm", started_at=time.time())
    second = runs.journal.begin(run_id, nxt, ("a",), token="t2", signature="@@seg",
                                now=time.time(), lease_seconds=15, first=[keep, ending])
    assert second.state == "go" and second.outputs == {"a": {"answer": 42}}  # read after the end
    assert runs.get_step(run_id, "a").status == "succeeded"
    members = runs.redis.zrange(runs.keys.leases, 0, -1)
    assert f"{run_id}|a" not in members and f"{run_id}|b" in members  # a's lease let go
    # b's lease refers to the segment's signature, kept once: the sweeper's claim follows it,
    # and moves it to the lease (the delivery that kept it is gone), so a claim again finds it
    claimed = runs.journal.claim_expired(now=time.time() + 60, grace_seconds=15)
    assert claimed == [(f"{run_id}|b", {"task": "legato.segment"})]
    assert runs.redis.hget(runs.keys.lease_sig, "@@seg") is None
    again = runs.journal.claim_expired(now=time.time() + 120, grace_seconds=15)
    assert again == [(f"{run_id}|b", {"task": "legato.segment"})]


def test_the_last_steps_end_rides_the_runs_finish(runs: RunStore) -> None:
    run_id = new_run(runs, "running")
    assert begin(runs, run_id, "a", token="t1").state == "go"
    ending = runs.journal.end_part(run_id, succeeded("a"), ("a",), token="t1", now=time.time())
    assert runs.end_run(run_id, "succeeded", output={"answer": 42}, first=[ending])
    assert runs.get_step(run_id, "a").status == "succeeded"
    assert runs.get_outputs(run_id) == {"a": {"answer": 42}}
    assert runs.get_run(run_id).status == "succeeded"
    assert not runs.end_run(run_id, "failed", first=[ending])  # terminal is final, sent twice too


def test_a_batch_delivery_that_finds_a_member_busy_leaves_no_reference_behind(
        runs: RunStore) -> None:
    run_id = new_run(runs)
    assert begin(runs, run_id, "v[1]", token="live").state == "go"  # another delivery runs it
    members = [(StepRecord(path=p, status="running", kind="llm", started_at=time.time()), ())
               for p in ("v[0]", "v[1]")]
    signature = {"task": "legato.llm_batch", "id": "b"}
    begins = runs.journal.begin_many(run_id, members, token="dup", signature=signature,
                                     task_id="b", now=time.time(), lease_seconds=15)
    assert [b.state for b in begins] == ["go", "busy"]
    runs.journal.unshare_batch("b", token="dup", signature=signature,
                               began=[f"{run_id}|v[0]"], busy=[f"{run_id}|v[1]"])
    sigs = runs.redis.hgetall(runs.keys.lease_sig)
    assert not [ref for ref in sigs if ref.startswith("@")]
    assert sigs[f"{run_id}|v[1]"] == '{"task":"t"}'  # the live delivery's lease is left as it was
    # the member this delivery began, never run, is still sent again when its lease runs out
    claimed = dict(runs.journal.claim_expired(now=time.time() + 60, grace_seconds=15))
    assert claimed[f"{run_id}|v[0]"] == signature


def test_a_busy_batch_delivery_keeps_the_reference_a_delivery_of_the_same_task_runs_under(
        runs: RunStore) -> None:
    run_id = new_run(runs)
    member = (StepRecord(path="v[0]", status="running", kind="llm", started_at=time.time()), ())
    signature = {"task": "legato.llm_batch", "id": "b"}
    assert runs.journal.begin_many(run_id, [member], token="live", signature=signature,
                                   task_id="b", now=time.time(), lease_seconds=15)[0].state == "go"
    again = runs.journal.begin_many(run_id, [member], token="dup", signature=signature,
                                    task_id="b", now=time.time(), lease_seconds=15)
    assert again[0].state == "busy"
    runs.journal.unshare_batch("b", token="dup", signature=signature, began=[],
                               busy=[f"{run_id}|v[0]"])
    assert runs.redis.hget(runs.keys.lease_sig, "@b") is not None  # the live one's, still
    claimed = dict(runs.journal.claim_expired(now=time.time() + 60, grace_seconds=15))
    assert claimed[f"{run_id}|v[0]"] == signature
