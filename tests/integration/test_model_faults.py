"""The model layer under faults, end to end: real workers, real Redis, the fake model over HTTP.

Each test gives its models their own names, so the fake server's counts (`by_model`) and the
shared breaker state in Redis belong to that test alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from legato import Legato, Llm, Pipeline
from legato.spec import Breaker, Budget, ModelConfig, Prices

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["good", "bad"]}},
    "required": ["label"],
    "additionalProperties": False,
}


def model(base_url: str, name: str, **kw: Any) -> ModelConfig:
    return ModelConfig(base_url=base_url, model=name, structured_output="json_object", **kw)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def one_step(models: dict[str, ModelConfig], alias: str, **step: Any) -> Pipeline:
    return Pipeline(name="faulty", models=models,
                    steps=[Llm(id="ask", model=alias, prompt="Classify {{ input.text }}", **step)])


def run_one(legato: Legato, pipeline: Pipeline, text: str = "this") -> tuple[Any, Any]:
    run = legato.wait(legato.submit(pipeline, {"text": text}), timeout=60)
    steps = {s.path: s for s in legato.steps(run.id)}
    return run, steps.get("ask")


def test_429_with_retry_after_waits_as_told_then_succeeds(legato, fake, stack_env):
    name = unique("m429")
    fake.script({"faults": [{"kind": "status", "code": 429, "retry_after": 1, "times": 1}]})
    run, step = run_one(legato, one_step({"m": model(stack_env["LEGATO_MODEL_BASE_URL"], name)},
                                         "m"))

    assert run.status == "succeeded", run.error
    assert fake.stats()["by_model"] == {name: 2}
    (call,) = step.detail["model_calls"]
    assert [a["status"] for a in call["attempts"]] == [429, 200]
    assert call["attempts"][0]["wait"] == 1.0 and call["attempts"][0]["retry_after"] == 1.0
    assert step.ended_at - step.started_at >= 1.0


def test_a_burst_of_500s_is_retried_with_backoff(legato, fake, stack_env):
    name = unique("m500")
    fake.script({"faults": [{"kind": "status", "code": 500, "times": 2}]})
    run, step = run_one(legato, one_step({"m": model(stack_env["LEGATO_MODEL_BASE_URL"], name)},
                                         "m"))

    assert run.status == "succeeded", run.error
    assert fake.stats()["by_model"] == {name: 3}
    attempts = step.detail["model_calls"][0]["attempts"]
    assert [a["status"] for a in attempts] == [500, 500, 200]
    assert all(0 <= a["wait"] <= 20 for a in attempts[:2]) and "wait" not in attempts[2]


def test_a_hang_past_the_timeout_is_cut_and_retried(legato, fake, stack_env):
    name = unique("mhang")
    fake.script({"faults": [{"kind": "hang", "seconds": 3, "times": 1}]})
    cfg = model(stack_env["LEGATO_MODEL_BASE_URL"], name, timeout=0.5)
    run, step = run_one(legato, one_step({"m": cfg}, "m"))

    assert run.status == "succeeded", run.error
    assert fake.stats()["by_model"] == {name: 2}
    first, second = step.detail["model_calls"][0]["attempts"]
    assert first["type"] == "TransientError" and "timed out" in first["error"]
    assert 0.4 <= first["seconds"] < 2 and second["status"] == 200


def test_malformed_json_is_repaired_by_asking_again(legato, fake, stack_env):
    name = unique("mbroken")
    fake.script({"faults": [{"kind": "malformed", "times": 1}]})
    cfg = model(stack_env["LEGATO_MODEL_BASE_URL"], name)
    run, step = run_one(legato, one_step({"m": cfg}, "m", output_schema=SCHEMA))

    assert run.status == "succeeded", run.error
    assert step.output["label"] in ("good", "bad")
    assert fake.stats()["by_model"] == {name: 2}
    (repair,) = step.detail["repairs"]
    assert repair["attempt"] == 1 and "not valid JSON" in repair["error"]


def test_a_schema_violation_is_repaired_and_max_repairs_is_per_step(legato, fake, stack_env):
    name = unique("mwrong")
    # Only the first ask matches (its last user message); the repair message does not.
    fake.script({"rules": [{"match": {"contains": "Classify"}, "reply": {"label": "ugly"}}]})
    cfg = model(stack_env["LEGATO_MODEL_BASE_URL"], name)
    run, step = run_one(legato, one_step({"m": cfg}, "m", output_schema=SCHEMA))

    assert run.status == "succeeded", run.error
    assert fake.stats()["by_model"] == {name: 2}
    assert "does not match the schema" in step.detail["repairs"][0]["error"]

    strict = one_step({"m": cfg}, "m", output_schema=SCHEMA, max_repairs=0)
    run, step = run_one(legato, strict, "again")
    assert run.status == "failed" and step.error_type == "OutputInvalid"
    assert "after 0 repair attempts" in run.error
    assert fake.stats()["by_model"] == {name: 3}


def test_context_length_fails_at_once_with_a_clear_reason(legato, fake, stack_env):
    name = unique("mctx")
    fake.script({"faults": [{"kind": "status", "code": 400, "body":
                             "This model's maximum context length is 2048 tokens"}]})
    run, step = run_one(legato, one_step({"m": model(stack_env["LEGATO_MODEL_BASE_URL"], name)},
                                         "m"))

    assert run.status == "failed" and step.error_type == "PermanentError"
    assert run.error.startswith(f"ask: context too long for {name} (HTTP 400)")
    assert fake.stats()["by_model"] == {name: 1}


def test_an_outage_trips_the_breaker_to_the_fallback_and_it_recovers(legato, fake, stack_env):
    url = stack_env["LEGATO_MODEL_BASE_URL"]
    down, spare = unique("primary"), unique("spare")
    models = {
        "main": model(url, down, fallbacks=["backup"], max_attempts=2,
                      breaker=Breaker(failures=2, cooldown=1.5)),
        "backup": model(url, spare),
    }
    pipeline = one_step(models, "main")
    fake.script({"faults": [{"kind": "status", "code": 503, "match": {"model": down}}]})

    run, step = run_one(legato, pipeline, "one")  # two failed attempts open the circuit
    assert run.status == "succeeded", run.error
    assert fake.stats()["by_model"] == {down: 2, spare: 1}
    assert [c["outcome"] for c in step.detail["model_calls"]] == ["failed", "ok"]

    for text in ("two", "three"):  # open: straight to the fallback, the primary is not called
        run, step = run_one(legato, pipeline, text)
        assert run.status == "succeeded", run.error
        assert [c["outcome"] for c in step.detail["model_calls"]] == ["circuit open", "ok"]
    assert fake.stats()["by_model"] == {down: 2, spare: 3}

    fake.script({})  # the outage ends; after the cool-down a probe goes through and closes it
    time.sleep(1.6)
    for text in ("four", "five"):
        run, step = run_one(legato, pipeline, text)
        assert run.status == "succeeded", run.error
        assert [c["model"] for c in step.detail["model_calls"]] == ["main"]
    assert fake.stats()["by_model"] == {down: 4, spare: 3}


def test_a_budget_stops_the_run_cleanly_with_what_was_done(legato, fake, stack_env):
    name = unique("mbudget")
    cfg = model(stack_env["LEGATO_MODEL_BASE_URL"], name,
                prices=Prices(input_per_mtok=1000.0, output_per_mtok=2000.0))
    steps = [Llm(id=f"s{i}", model="m", prompt=f"step {i} {{{{ input.text }}}}") for i in range(4)]
    by_calls = Pipeline(name="budgeted", models={"m": cfg}, steps=steps,
                        budget=Budget(max_calls=2))
    run = legato.wait(legato.submit(by_calls, {"text": "x"}), timeout=60)

    assert run.status == "failed"
    assert run.error == "s2: budget exceeded: max_calls 2 made"
    done = {s.path: s for s in legato.steps(run.id)}
    assert done["s0"].status == done["s1"].status == "succeeded"
    assert done["s2"].error_type == "BudgetExceeded" and "s3" not in done
    assert fake.stats()["by_model"] == {name: 2}
    usage = done["s0"].usage
    expected = (usage.prompt_tokens * 1000 + usage.completion_tokens * 2000) / 1e6
    assert usage.cost == expected > 0
    assert run.usage.cost == pytest.approx(done["s0"].usage.cost + done["s1"].usage.cost)
    show = subprocess.run([sys.executable, "-m", "legato.cli", "show", run.id],
                          env={**os.environ, **stack_env, "COLUMNS": "200"}, capture_output=True,
                          text=True, timeout=60)
    assert f"cost {run.usage.cost:.6g}" in show.stdout, show.stdout + show.stderr
    assert f"({usage.cost:.4g})" in show.stdout

    by_cost = Pipeline(name="budgeted", models={"m": cfg}, steps=steps,
                       budget=Budget(max_cost=expected / 2))
    run = legato.wait(legato.submit(by_cost, {"text": "y"}), timeout=60)
    assert run.status == "failed" and run.error.startswith("s1: budget exceeded: cost")
    assert fake.stats()["by_model"] == {name: 3}


def test_a_deadline_stops_the_run_at_the_next_model_call(legato, fake, stack_env):
    name = unique("mdeadline")
    fake.script({"faults": [{"kind": "latency", "ms": 1200, "match": {"contains": "step 0"}}]})
    cfg = model(stack_env["LEGATO_MODEL_BASE_URL"], name)
    steps = [Llm(id=f"s{i}", model="m", prompt=f"step {i} {{{{ input.text }}}}") for i in range(3)]
    pipeline = Pipeline(name="hurried", models={"m": cfg}, steps=steps,
                        budget=Budget(deadline_seconds=1))
    run = legato.wait(legato.submit(pipeline, {"text": "z"}), timeout=60)

    assert run.status == "failed"
    assert run.error.startswith("s1: budget exceeded: deadline of 1s passed")
    assert fake.stats()["by_model"] == {name: 1}


def test_an_open_circuit_without_fallbacks_still_retries_the_model(legato, fake, stack_env):
    name = unique("lonely")
    cfg = model(stack_env["LEGATO_MODEL_BASE_URL"], name, max_attempts=2,
                breaker=Breaker(failures=2, cooldown=30))
    fake.script({"faults": [{"kind": "status", "code": 500, "times": 3}]})

    # The first try of the step: 500, 500 open the circuit and fail it (transiently); the step's
    # task retry finds the circuit open and nowhere else to go, so it calls the model anyway.
    run, step = run_one(legato, one_step({"m": cfg}, "m"))
    assert run.status == "succeeded", run.error
    assert step.attempt == 2
    skipped, called = step.detail["model_calls"]
    assert skipped == {"model": "m", "attempts": [], "outcome": "circuit open"}
    assert [a["status"] for a in called["attempts"]] == [500, 200]
    assert fake.stats()["by_model"] == {name: 4}
