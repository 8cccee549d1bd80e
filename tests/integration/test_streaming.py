"""Token streaming out of running steps, end to end: the fake model streams (with its faults),
real workers publish on the run's Redis Stream, and the committed text of every kept answer is
the journaled output byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest

from legato import Agent, InputError, Legato, Llm, Pipeline
from legato.events import (
    AttemptAborted,
    AttemptCommitted,
    AttemptStarted,
    Delta,
    Event,
    RunFinished,
    StepFinished,
    StepStarted,
)
from legato.local import processes
from legato.spec import ModelConfig

SCHEMA = {"type": "object", "properties": {"label": {"type": "string", "enum": ["good", "bad"]}},
          "required": ["label"], "additionalProperties": False}
COUNT_CALL = {"name": "word_count", "arguments": {"text": "one two three four"}}


def calls(events: list[Event]) -> dict[tuple[str, int, int], dict[str, Any]]:
    """Each model call seen: its model, text, and whether it was committed or aborted."""
    seen: dict[tuple[str, int, int], dict[str, Any]] = {}
    for e in events:
        if isinstance(e, AttemptStarted):
            seen[(e.path, e.attempt, e.call)] = {"model": e.model, "text": "", "state": "open"}
        elif isinstance(e, Delta):
            seen[(e.path, e.attempt, e.call)]["text"] += e.text
        elif isinstance(e, AttemptAborted):
            seen[(e.path, e.attempt, e.call)].update(state="aborted", reason=e.reason)
        elif isinstance(e, AttemptCommitted):
            assert seen[(e.path, e.attempt, e.call)]["state"] == "open"
            seen[(e.path, e.attempt, e.call)]["state"] = "committed"
    return seen


def committed(events: list[Event]) -> dict[str, list[str]]:
    """Per step path, the texts of its committed calls, in order."""
    out: dict[str, list[str]] = {}
    for (path, _, _), call in calls(events).items():
        if call["state"] == "committed":
            out.setdefault(path, []).append(call["text"])
    return out


def run_and_stream(legato: Legato, pipeline: Any, value: Any) -> tuple[Any, list[Event]]:
    run_id = legato.submit(pipeline, value)
    run = legato.wait(run_id, timeout=60)
    return run, list(legato.stream(run_id))


def assert_kept_is_journaled(legato: Legato, run_id: str, events: list[Event]) -> None:
    """Every llm step's one committed answer is its journaled output (the text, or the JSON it
    was parsed from), and no call is left open."""
    kept = committed(events)
    assert all(c["state"] != "open" for c in calls(events).values()), calls(events)
    llm_steps = [s for s in legato.steps(run_id) if s.kind == "llm"]
    assert llm_steps
    for step in llm_steps:
        (text,) = kept[step.path]
        if isinstance(step.output, str):
            assert text == step.output
        else:
            assert json.loads(text) == step.output


def model(base_url: str, **kw: Any) -> ModelConfig:
    return ModelConfig(base_url=base_url, model=f"s-{uuid.uuid4().hex[:8]}",
                       structured_output="json_object", **kw)


def one_step(base_url: str, **step: Any) -> Pipeline:
    cfg = step.pop("cfg", None) or model(base_url)
    return Pipeline(name="streamed", models={"m": cfg},
                    steps=[Llm(id="ask", model="m", prompt="Say {{ input.text }}", **step)])


def test_a_step_streams_its_answer_in_pieces_and_commits_the_journaled_text(
        legato, fake, stack_env):
    fake.script({"chunk_chars": 3})
    run, events = run_and_stream(legato, one_step(stack_env["LEGATO_MODEL_BASE_URL"]),
                                 {"text": "hello streaming world"})

    assert run.status == "succeeded", run.error
    kinds = [type(e) for e in events]
    assert kinds[0] is StepStarted and kinds[1] is AttemptStarted
    assert kinds[-3:] == [AttemptCommitted, StepFinished, RunFinished]
    assert sum(k is Delta for k in kinds) >= 1
    assert "".join(e.text for e in events if isinstance(e, Delta)) == run.output
    assert events[-1].status == "succeeded" and events[-2].status == "succeeded"
    assert {(e.path, e.attempt) for e in events if isinstance(e, Delta)} == {("ask", 1)}
    assert_kept_is_journaled(legato, run.id, events)


def test_a_stream_cut_mid_answer_is_retried_and_its_partial_attempt_aborted(
        legato, fake, stack_env):
    fake.script({"chunk_chars": 2, "faults": [{"kind": "stream_drop", "after": 4, "times": 1}]})
    run, events = run_and_stream(legato, one_step(stack_env["LEGATO_MODEL_BASE_URL"]),
                                 {"text": "a rather long answer to cut"})

    assert run.status == "succeeded", run.error
    seen = calls(events)
    first, second = seen[("ask", 1, 1)], seen[("ask", 1, 2)]
    assert first["state"] == "aborted" and "cut off" in first["reason"]
    assert first["text"] and first["text"] != run.output  # a partial answer was shown...
    assert second["state"] == "committed" and second["text"] == run.output  # ...then replaced
    assert_kept_is_journaled(legato, run.id, events)


def test_a_malformed_stream_event_is_retried_like_a_malformed_response(legato, fake, stack_env):
    fake.script({"faults": [{"kind": "stream_malformed", "after": 2, "times": 1}]})
    run, events = run_and_stream(legato, one_step(stack_env["LEGATO_MODEL_BASE_URL"]),
                                 {"text": "broken then whole"})

    assert run.status == "succeeded", run.error
    seen = calls(events)
    assert seen[("ask", 1, 1)]["state"] == "aborted"
    assert "malformed" in seen[("ask", 1, 1)]["reason"]
    assert seen[("ask", 1, 2)]["state"] == "committed"
    assert_kept_is_journaled(legato, run.id, events)


def test_a_repaired_answer_is_aborted_and_the_repair_committed(legato, fake, stack_env):
    fake.script({"faults": [{"kind": "malformed", "times": 1}]})
    run, events = run_and_stream(
        legato, one_step(stack_env["LEGATO_MODEL_BASE_URL"], output_schema=SCHEMA),
        {"text": "json please"})

    assert run.status == "succeeded", run.error
    seen = calls(events)
    assert seen[("ask", 1, 1)]["state"] == "aborted"  # valid HTTP, invalid JSON: re-asked
    assert seen[("ask", 1, 2)]["state"] == "committed"
    assert json.loads(seen[("ask", 1, 2)]["text"]) == run.output
    assert_kept_is_journaled(legato, run.id, events)


def test_a_step_retried_as_a_task_streams_a_new_attempt(legato, fake, stack_env):
    fake.script({"faults": [{"kind": "stream_drop", "after": 2, "times": 1}]})
    cfg = model(stack_env["LEGATO_MODEL_BASE_URL"], max_attempts=1)  # no quick HTTP retry
    run, events = run_and_stream(legato, one_step(stack_env["LEGATO_MODEL_BASE_URL"], cfg=cfg),
                                 {"text": "try the task again"})

    assert run.status == "succeeded", run.error
    seen = calls(events)
    assert seen[("ask", 1, 1)]["state"] == "aborted"
    assert seen[("ask", 2, 1)]["state"] == "committed"  # the journal's second attempt
    finished = [e for e in events if isinstance(e, StepFinished)]
    assert [(e.attempt, e.status) for e in finished] == [(1, "retrying"), (2, "succeeded")]
    assert_kept_is_journaled(legato, run.id, events)


def test_segments_stream_every_fused_step(legato, fake):
    steps = [Llm(id="s0", model="small", prompt="Start from {{ input.text }}"),
             Llm(id="s1", model="small", prompt="Go on: {{ outputs.s0 }}"),
             Llm(id="s2", model="small", prompt="And on: {{ outputs.s1 }}")]
    run, events = run_and_stream(legato, Pipeline(name="fused", steps=steps), {"text": "seg"})

    assert run.status == "succeeded", run.error
    assert len({s.task_id for s in legato.steps(run.id)}) == 1  # one segment task
    assert list(committed(events)) == ["s0", "s1", "s2"]
    assert_kept_is_journaled(legato, run.id, events)
    # Each step's events ride its handed-off end: written before the next step begins.
    bounds = [(e.type, getattr(e, "path", "")) for e in events
              if e.type in ("step_started", "step_finished", "run_finished")]
    assert bounds == [(kind, f"s{i}") for i in range(3)
                      for kind in ("step_started", "step_finished")] + [("run_finished", "")]


def test_vote_members_stream_from_their_batch(legato, fake):
    run, events = run_and_stream(legato, "sentiment_vote", {"review": "Loved it, truly."})

    assert run.status == "succeeded", run.error
    members = [p for p in committed(events) if "[" in p]
    assert len(members) == 3
    assert_kept_is_journaled(legato, run.id, events)


def test_agent_turns_stream_and_commit_the_final_answer(legato, fake):
    fake.script({"rules": [
        {"match": {"any_contains": '"tool": "word_count"'}, "reply": "It has 4 words."},
        {"match": {"contains": "Count the words"}, "tool_calls": [COUNT_CALL]},
    ]})
    agent = Pipeline(name="counter", steps=[Agent(
        id="counter", model="small", tools=["word_count"], system="You count words.",
        prompt="Count the words: {{ input.text }}")])
    run, events = run_and_stream(legato, agent, {"text": "one two three four"})

    assert run.status == "succeeded", run.error
    kept = committed(events)
    assert kept["counter/turn[0]"] == [""]  # a turn that asked for tools has no text
    assert kept["counter/turn[1]"] == ["It has 4 words."] and run.output == "It has 4 words."


def test_evaluate_rounds_stream_the_draft_and_the_verdict(legato, fake):
    run, events = run_and_stream(legato, "tagline_critic", {"product": "a quiet kettle"})

    assert run.status == "succeeded", run.error
    steps = {s.path: s for s in legato.steps(run.id)}
    rounds = [p for p in committed(events) if "/round[" in p]
    assert rounds and all(p in steps for p in rounds)
    for path in rounds:
        draft, verdict = committed(events)[path]  # two answers kept per round
        assert draft == steps[path].output["candidate"]
        assert json.loads(verdict) == steps[path].output["verdict"]


def test_the_stream_resumes_after_the_last_id_seen(legato, fake, stack_env):
    run, events = run_and_stream(legato, one_step(stack_env["LEGATO_MODEL_BASE_URL"]),
                                 {"text": "resume me"})
    assert len(events) >= 5

    rest = list(legato.stream(run.id, events[2].id))

    assert [e.id for e in rest] == [e.id for e in events[3:]]
    assert rest == events[3:]
    with pytest.raises(InputError, match="last_id: 'nope' is not an event id of run"):
        legato.stream(run.id, "nope")


def test_the_stream_expires_with_the_run(legato, fake, stack_env):
    run, _ = run_and_stream(legato, one_step(stack_env["LEGATO_MODEL_BASE_URL"]),
                            {"text": "gone later"})
    store = legato.store

    key = store.keys.events(run.id)
    assert store.redis.exists(key) and store.redis.ttl(key) > 0
    assert store.redis.ttl(key) == store.redis.ttl(store.keys.run(run.id))


def test_legato_watch_follows_a_run_to_its_end(legato, fake, stack_env):
    fake.script({"faults": [{"kind": "stream_drop", "after": 3, "times": 1},
                            {"kind": "stream_slow", "ms": 30}]})
    run_id = legato.submit(one_step(stack_env["LEGATO_MODEL_BASE_URL"]), {"text": "watch me"})

    shown = subprocess.run([sys.executable, "-m", "legato.cli", "watch", run_id],
                           capture_output=True, text=True, timeout=60, env=_env(stack_env))
    as_json = subprocess.run([sys.executable, "-m", "legato.cli", "watch", run_id, "--json"],
                             capture_output=True, text=True, timeout=60, env=_env(stack_env))

    output = legato.status(run_id).output
    assert shown.returncode == 0, shown.stderr
    assert output in shown.stdout and "1 attempt aborted" in shown.stdout
    assert "run succeeded" in shown.stdout
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert lines[-1]["type"] == "run_finished" and lines[-1]["status"] == "succeeded"


def test_with_streaming_off_a_run_publishes_nothing_and_its_stream_just_ends(
        legato, fake, stack_env, tmp_path):
    queue = f"legato.test.nostream.{uuid.uuid4().hex[:8]}"
    env = {**stack_env, "LEGATO_STREAM": "0"}
    with processes.worker("nostream", [queue], env=env, concurrency=2, log_dir=tmp_path):
        pipeline = Pipeline(name="plain", steps=[
            Llm(id="ask", model="small", queue=queue, prompt="Say {{ input.text }}")])
        run, events = run_and_stream(legato, pipeline, {"text": "no tokens"})

    assert run.status == "succeeded", run.error
    assert not legato.store.redis.exists(legato.store.keys.events(run.id))
    assert events == [RunFinished(status="succeeded")]  # read from the record, not the stream


def test_with_streaming_watched_only_a_run_someone_follows_streams(
        legato, fake, stack_env, tmp_path):
    """LEGATO_STREAM=watched: a run nobody follows makes plain calls and publishes no step
    events; a run followed (`Legato.stream`, which marks it watched) streams every step, and
    what it commits is what was journaled."""
    queue = f"legato.test.watched.{uuid.uuid4().hex[:8]}"
    pipeline = Pipeline(name="watched", steps=[
        Llm(id="first", model="small", queue=queue, prompt="Say {{ input.text }}"),
        Llm(id="second", model="small", queue=queue, prompt="Then {{ outputs.first }}")])
    alone = legato.submit(pipeline, {"text": "nobody looks"})
    followed = legato.submit(pipeline, {"text": "someone looks"})
    told = legato.submit(pipeline, {"text": "someone will look"}, watch=True)
    seen: list[Event] = []
    follower = threading.Thread(target=lambda: seen.extend(legato.stream(followed)))
    follower.start()
    redis, keys = legato.store.redis, legato.store.keys
    deadline = time.monotonic() + 10
    while not redis.exists(keys.watched(followed)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert redis.ttl(keys.watched(followed)) > 0 and not redis.exists(keys.watched(alone))

    env = {**stack_env, "LEGATO_STREAM": "watched"}  # steps queued before a worker is up
    with processes.worker("watched", [queue], env=env, concurrency=2, log_dir=tmp_path):
        runs = [legato.wait(r, timeout=60) for r in (alone, followed, told)]
        follower.join(timeout=60)

    assert [r.status for r in runs] == ["succeeded"] * 3, [r.error for r in runs]
    streamed = fake.stats()["streamed_by_step"]
    for run_id in (followed, told):  # submit(watch=True) marked it before it was enqueued
        assert sorted(t for t in streamed if t.startswith(f"{run_id}/")) == [
            f"{run_id}/first", f"{run_id}/second"]
    assert not any(t.startswith(f"{alone}/") for t in streamed)  # plain requests
    assert {e.path for e in seen if isinstance(e, StepFinished)} == {"first", "second"}
    assert_kept_is_journaled(legato, followed, seen)
    assert list(legato.stream(alone)) == [RunFinished(status="succeeded")]


def _env(stack_env: dict[str, str]) -> dict[str, str]:
    import os

    return {**os.environ, **stack_env, "COLUMNS": "200"}
