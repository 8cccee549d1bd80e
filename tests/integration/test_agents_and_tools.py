"""Agents and tools end to end: the tool loop, its cap, parallel tool calls, tool timeouts and
retries, idempotency keys across a retry, and a tool's own queue."""

from __future__ import annotations

import time

from legato import Legato, Pipeline, Tool
from legato.spec import Agent
from legato.tools.runner import idempotency_key

COUNT_CALL = {"name": "word_count", "arguments": {"text": "one two three four"}}


def _steps(legato: Legato, run_id: str) -> dict:
    return {s.path: s for s in legato.steps(run_id)}


def _agent(max_turns: int = 4, tools: tuple[str, ...] = ("word_count", "nap")) -> Pipeline:
    return Pipeline(name="counter", steps=[Agent(
        id="counter", model="small", max_turns=max_turns, tools=list(tools),
        system="You count words with tools.", prompt="Count the words: {{ input.text }}")])


def test_an_agent_calls_a_tool_then_answers(legato, fake):
    fake.script({"rules": [
        {"match": {"any_contains": '"tool": "word_count"'}, "reply": "It has 4 words."},
        {"match": {"contains": "Count the words"}, "tool_calls": [COUNT_CALL]},
    ]})
    run = legato.wait(legato.submit(_agent(), {"text": "one two three four"}), timeout=30)

    assert run.status == "succeeded", run.error
    assert run.output == "It has 4 words."
    steps = _steps(legato, run.id)
    assert steps["counter"].detail == {"turns": 2, "tool_calls": 1}
    transcript = steps["counter/turn[1]"].output["messages"]
    assert [m["role"] for m in transcript] == ["system", "user", "assistant", "tool", "assistant"]
    assert transcript[3]["content"] == '{"tool": "word_count", "result": 4}'
    assert run.usage.calls == 2


def test_an_agent_that_never_answers_stops_at_max_turns(legato, fake):
    fake.script({"rules": [{"match": {"contains": "Count the words"},
                            "tool_calls": [COUNT_CALL]}]})
    run = legato.wait(legato.submit(_agent(max_turns=3), {"text": "a b"}), timeout=30)

    assert run.status == "failed"
    assert run.error == "counter: the agent used its 3 turns without a final answer"
    steps = _steps(legato, run.id)
    assert steps["counter"].error_type == "BudgetExceeded"
    assert sorted(p for p in steps if "/turn[" in p) == [f"counter/turn[{i}]" for i in range(3)]
    assert fake.stats()["requests"] == 3


def test_the_tool_calls_of_a_turn_run_in_parallel(legato, fake):
    naps = [{"name": "nap", "arguments": {"seconds": 1.0}}] * 3
    fake.script({"rules": [
        {"match": {"any_contains": '"tool": "nap"'}, "reply": "Rested."},
        {"match": {"contains": "Count the words"}, "tool_calls": naps},
    ]})
    run = legato.wait(legato.submit(_agent(), {"text": "zzz"}), timeout=30)

    assert run.status == "succeeded", run.error
    turn = _steps(legato, run.id)["counter/turn[0]"]
    assert turn.output["tool_calls"] == 3
    assert turn.ended_at - turn.started_at < 2.0  # three 1 s naps side by side, not 3 s


def test_an_agent_asking_for_a_tool_it_was_not_given_is_told_so(legato, fake):
    fake.script({"rules": [
        {"match": {"any_contains": "not one of this agent's tools"}, "reply": "Sorry."},
        {"match": {"contains": "Count the words"},
         "tool_calls": [{"name": "explode", "arguments": {"text": "x"}}]},
    ]})
    run = legato.wait(legato.submit(_agent(), {"text": "x"}), timeout=30)
    assert run.status == "succeeded" and run.output == "Sorry."


def test_a_tool_that_times_out_is_retried_then_fails_the_step_readably(legato, fake):
    pipeline = Pipeline(name="sleepy", steps=[
        Tool(id="wait", tool="sleepy", args={"seconds": 5})])
    started = time.monotonic()
    run = legato.wait(legato.submit(pipeline, {}), timeout=60)

    assert run.status == "failed"
    assert run.error == "wait: tool 'sleepy' timed out after 0.3s"
    record = _steps(legato, run.id)["wait"]
    assert record.error_type == "TransientError" and record.attempt == 4  # 3 task retries
    assert time.monotonic() - started < 30


def test_a_tool_gets_the_same_idempotency_key_when_its_step_is_tried_again(
        legato, fake, tmp_path):
    ledger = tmp_path / "ledger.txt"
    pipeline = Pipeline(name="ledger", steps=[
        Tool(id="book", tool="flaky_ledger", args={"path": str(ledger)})])
    run_id = legato.submit(pipeline, {})
    assert legato.wait(run_id, timeout=30).status == "failed"
    legato.resume(run_id)
    run = legato.wait(run_id, timeout=30)

    assert run.status == "succeeded" and run.output == 2
    keys = ledger.read_text().splitlines()
    assert keys == [idempotency_key(run_id, "book", "0")] * 2


def test_a_tool_runs_on_the_queue_it_names(legato, fake):
    run = legato.wait(legato.submit(Pipeline(name="where", steps=[
        Tool(id="here", tool="where_am_i")]), {}), timeout=30)
    assert run.status == "succeeded", run.error
    here = _steps(legato, run.id)["here"]
    assert here.queue == "legato.branch.technical" and here.worker.startswith("branches@")


def _port(fake) -> str:
    return fake.root.rsplit(":", 1)[1]


def test_http_tools_call_allowed_hosts_and_refuse_others(legato, fake):
    pipeline = Pipeline(name="http_tools", steps=[
        Tool(id="declared", tool="local_health", args={"port": "{{ input.port }}"}),
        Tool(id="adhoc", tool="http_get", args={"url": "{{ input.url }}"}),
    ])
    ok = legato.wait(legato.submit(pipeline, {"port": _port(fake),
                                              "url": f"{fake.root}/health"}), timeout=30)
    assert ok.status == "succeeded", ok.error
    steps = _steps(legato, ok.id)
    assert steps["declared"].output["status"] == 200
    assert steps["adhoc"].output == steps["declared"].output

    refused = legato.wait(legato.submit(pipeline, {
        "port": _port(fake), "url": "http://169.254.169.254/latest/meta-data"}), timeout=30)
    assert refused.status == "failed"
    assert refused.error == ("adhoc: refused URL 'http://169.254.169.254/latest/meta-data': "
                             "host '169.254.169.254' is not in LEGATO_HTTP_TOOL_HOSTS")
    assert _steps(legato, refused.id)["adhoc"].error_type == "PermanentError"
