"""Every run ends, whatever a producer's template, a tool or a model does: a template that would
spin or blow up stops at its limits, a tool output JSON cannot hold fails its step once, and an
agent turn runs a bounded number of tool calls."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

from legato import Llm, Pipeline, Tool
from legato.spec import Agent

SPIN = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.mark.parametrize("prompt", [
    SPIN,
    "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "{{ input.text * 100000000 }}",
], ids=["nested-ranges", "exponential-macro", "huge-product"])
def test_a_template_that_would_never_finish_fails_its_step_in_seconds(legato, fake, prompt):
    started = time.monotonic()
    run = legato.wait(legato.submit(Pipeline(name="spin", steps=[
        Llm(id="spin", model="small", prompt=prompt)]), {"text": "x"}), timeout=30)
    assert run.status == "failed"
    assert run.error.startswith("spin: template failed: TemplateLimit"), run.error
    assert time.monotonic() - started < 15
    assert fake.stats()["requests"] == 0


@pytest.mark.parametrize("shape", ["set", "bytes", "object"])
def test_a_tool_output_json_cannot_hold_fails_the_step_once(legato, fake, shape):
    calls = Path(tempfile.gettempdir()) / f"legato-not-json-{shape}.calls"
    calls.unlink(missing_ok=True)
    started = time.monotonic()
    run = legato.wait(legato.submit(Pipeline(name="odd", steps=[
        Tool(id="odd", tool="not_json", args={"shape": shape})]), {}), timeout=30)
    assert run.status == "failed"
    assert run.error.startswith("odd: output is not JSON"), run.error
    assert time.monotonic() - started < 10
    time.sleep(2)  # long enough for a re-dispatch to show, were there one
    assert calls.read_text() == "x"  # it ran once: not sent again and again
    assert legato.status(run.id).status == "failed"


def test_an_agent_turn_runs_at_most_its_cap_of_tool_calls(legato, fake):
    many = [{"name": "word_count", "arguments": {"text": f"w{i}"}} for i in range(40)]
    fake.script({"rules": [
        {"match": {"any_contains": "at most 5 tool calls"}, "reply": "Done."},
        {"match": {"contains": "Count"}, "tool_calls": many},
    ]})
    agent = Agent(id="greedy", model="small", tools=["word_count"], max_tool_calls_per_turn=5,
                  prompt="Count {{ input.text }}")
    run = legato.wait(legato.submit(Pipeline(name="greedy", steps=[agent]), {"text": "x"}),
                      timeout=30)
    assert run.status == "succeeded", run.error
    turn = {s.path: s for s in legato.steps(run.id)}["greedy/turn[0]"]
    assert turn.output["tool_calls"] == 5 and turn.detail["refused_tool_calls"] == 35
    answers = [m["content"] for m in turn.output["messages"] if m["role"] == "tool"]
    assert len(answers) == 40  # every call the model made gets an answer
    assert sum('"result": 1' in a for a in answers) == 5
    assert sum("not run" in a for a in answers) == 35


def test_agents_default_to_a_cap_of_sixteen_tool_calls_a_turn():
    assert Agent(id="a", model="m", prompt="p").max_tool_calls_per_turn == 16
