"""The patterns beyond the seed: evaluator-optimizer loops, router confidence and escalation,
votes with a quorum — each with its cap, end to end on real workers and the fake model."""

from __future__ import annotations

import os
import uuid

import pytest

from legato import Legato, Llm, Parallel, Pipeline, Route
from legato.local import processes
from legato.spec import Aggregate, Classifier, Evaluate, ModelCall, ModelConfig, Vote


def _steps(legato: Legato, run_id: str) -> dict:
    return {s.path: s for s in legato.steps(run_id)}


def _tagline(max_rounds: int = 4, min_score: float | None = None) -> Pipeline:
    return Pipeline(name="tagline", steps=[Evaluate(
        id="tagline", max_rounds=max_rounds, min_score=min_score,
        generator=ModelCall(model="small", prompt=(
            "Write a tagline for {{ input.product }} (round {{ round }})"
            "{% if feedback %} Feedback: {{ feedback }}{% endif %}")),
        evaluator=ModelCall(model="small", system="You judge taglines.",
                            prompt="Judge: {{ candidate }}"),
    )])


def _judge(round_no: int, passed: bool, score: float) -> dict:
    return {"match": {"system_contains": "You judge", "contains": f"(round {round_no})"},
            "reply": {"pass": passed, "score": score, "feedback": f"feedback {round_no}"}}


def test_evaluate_revises_with_feedback_until_it_passes(legato, fake):
    fake.script({"rules": [_judge(0, False, 0.4), _judge(1, True, 0.9)]})
    run = legato.wait(legato.submit(_tagline(), {"product": "tea"}), timeout=30)

    assert run.status == "succeeded", run.error
    assert run.output == ("[fake:smollm2] Write a tagline for tea (round 1) "
                          "Feedback: feedback 0")
    steps = _steps(legato, run.id)
    assert steps["tagline"].detail == {"rounds": 2, "stopped": "passed", "best_round": 1}
    assert steps["tagline/round[0]"].output["verdict"]["pass"] is False
    assert "tagline/round[2]" not in steps
    assert run.usage.calls == 4


def test_evaluate_stops_when_a_round_is_no_better(legato, fake):
    fake.script({"rules": [_judge(0, False, 0.5), _judge(1, False, 0.3)]})
    run = legato.wait(legato.submit(_tagline(), {"product": "jam"}), timeout=30)

    assert run.status == "succeeded", run.error
    assert run.output.endswith("(round 0)")  # the best so far is kept
    assert _steps(legato, run.id)["tagline"].detail["stopped"] == "no_improvement"


def test_evaluate_is_capped_by_max_rounds(legato, fake):
    fake.script({"rules": [_judge(0, False, 0.1), _judge(1, False, 0.2)]})
    run = legato.wait(legato.submit(_tagline(max_rounds=2), {"product": "oil"}), timeout=30)

    assert run.status == "succeeded", run.error
    steps = _steps(legato, run.id)
    assert steps["tagline"].detail == {"rounds": 2, "stopped": "max_rounds", "best_round": 1}
    assert run.output.startswith("[fake:smollm2] Write a tagline for oil (round 1)")


def _triage() -> Pipeline:
    # Two aliases of its own, so the fake model can tell the small model from the large one.
    models = {alias: ModelConfig(base_url=os.environ["LEGATO_MODEL_BASE_URL"],
                                 model=f"{alias}-model",
                                 structured_output="json_object")
              for alias in ("tiny", "big")}
    return Pipeline(name="confident_triage", models=models, steps=[Route(
        id="triage", default="general",
        classifier=Classifier(model="tiny", prompt="Classify: {{ input.ticket }}",
                              min_confidence=0.7, escalate_to="big"),
        branches={name: Llm(id=name, model="tiny", prompt=f"{name}: {{{{ input.ticket }}}}")
                  for name in ("billing", "technical", "general")})])


def test_an_unsure_router_escalates_to_a_larger_model(legato, fake):
    fake.script({"rules": [
        {"match": {"model": "tiny-model", "contains": "Classify"},
         "reply": {"branch": "billing", "confidence": 0.3}},
        {"match": {"model": "big-model"}, "reply": {"branch": "technical", "confidence": 0.95}},
    ]})
    run = legato.wait(legato.submit(_triage(), {"ticket": "it crashes"}), timeout=30)

    assert run.status == "succeeded", run.error
    triage = _steps(legato, run.id)["triage"]
    assert triage.output == {"branch": "technical", "confidence": 0.95}
    assert triage.detail["escalated"] == {"from": "tiny", "branch": "billing", "confidence": 0.3}
    assert run.output == "[fake:tiny-model] technical: it crashes"


def test_a_router_still_unsure_takes_the_default_branch(legato, fake):
    fake.script({"rules": [
        {"match": {"model": "tiny-model", "contains": "Classify"},
         "reply": {"branch": "billing", "confidence": 0.2}},
        {"match": {"model": "big-model"}, "reply": {"branch": "technical", "confidence": 0.5}},
    ]})
    run = legato.wait(legato.submit(_triage(), {"ticket": "hmm"}), timeout=30)

    assert run.status == "succeeded", run.error
    triage = _steps(legato, run.id)["triage"]
    assert triage.output == {"branch": "general", "confidence": 0.5}
    assert triage.detail["low_confidence"] is True and triage.detail["unsure_of"] == "technical"


@pytest.fixture
def one_at_a_time(stack_env, tmp_path):
    queue = f"legato.test.vote.{uuid.uuid4().hex[:6]}"
    with processes.worker(f"voter-{queue[-6:]}", [queue], env=stack_env, concurrency=1,
                          log_dir=tmp_path):
        yield queue


def test_a_vote_stops_calling_voters_once_the_quorum_agrees(legato, fake, one_at_a_time):
    pipeline = Pipeline(name="quorum", steps=[Parallel(
        id="poll", aggregate=Aggregate(method="majority"),
        vote=Vote(n=5, quorum=2, step=Llm(
            id="voter", model="small", queue=one_at_a_time, prompt="Yes or no: {{ input.q }}",
            output_schema={"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}},
                           "required": ["answer"]})))])
    run = legato.wait(legato.submit(pipeline, {"q": "is it tea time?"}), timeout=30)

    assert run.status == "succeeded", run.error
    steps = _steps(legato, run.id)
    voters = [steps[f"poll/voter[{i}]"] for i in range(5)]
    assert [v.status for v in voters] == ["succeeded"] * 2 + ["skipped"] * 3
    assert run.output == voters[0].output == voters[1].output
    assert steps["poll"].detail["votes"] == 2 and steps["poll"].detail["failed"] == []
    assert fake.stats()["requests"] == 2


def _researcher(max_rounds: int) -> Pipeline:
    from legato.spec import Orchestrate

    return Pipeline(name="rounds", steps=[Orchestrate(
        id="study", max_rounds=max_rounds, max_subtasks=2, on_failure="skip",
        planner=ModelCall(model="small", system="You plan research.", prompt=(
            "Plan round {{ round }} for {{ input.topic }}."
            "{% for r in results %} Done: {{ r.subtask.title }}.{% endfor %}")),
        worker=ModelCall(model="small", prompt="Do {{ subtask.title }}"),
        synthesizer=ModelCall(model="small", prompt=(
            "Sum up:{% for r in results %} {{ r.subtask.title }}={{ r.output }}{% endfor %}")),
    )])


def _sub(*titles: str) -> dict:
    return {"subtasks": [{"title": t, "instructions": "go"} for t in titles]}


def test_an_orchestrator_plans_another_round_after_seeing_results(legato, fake):
    fake.script({"rules": [
        {"match": {"contains": "Plan round 0"}, "reply": _sub("alpha", "beta")},
        # Matches only if the planner was shown the first round's results.
        {"match": {"contains": "Plan round 1 for tea. Done: alpha. Done: beta."},
         "reply": _sub("gamma", "delta", "epsilon")},
        {"match": {"contains": "Plan round 2"}, "reply": _sub("never")},
        {"match": {"contains": "Do "}, "reply": "ok"},
    ]})
    run = legato.wait(legato.submit(_researcher(max_rounds=2), {"topic": "tea"}), timeout=30)

    assert run.status == "succeeded", run.error
    steps = _steps(legato, run.id)
    assert steps["study/plan[1]"].detail["truncated_from"] == 3  # max_subtasks per round
    workers = sorted(p for p in steps if "/worker[" in p)
    assert workers == [f"study/worker[{i}]" for i in range(4)]
    assert run.output == "[fake:smollm2] Sum up: alpha=ok beta=ok gamma=ok delta=ok"
    assert "study/plan[2]" not in steps  # capped by max_rounds


def test_an_orchestrator_stops_early_when_the_planner_has_nothing_more(legato, fake):
    fake.script({"rules": [
        {"match": {"contains": "Plan round 0"}, "reply": _sub("alpha")},
        {"match": {"contains": "Plan round 1"}, "reply": {"subtasks": []}},
        {"match": {"contains": "Do "}, "reply": "ok"},
    ]})
    run = legato.wait(legato.submit(_researcher(max_rounds=3), {"topic": "jam"}), timeout=30)

    assert run.status == "succeeded", run.error
    steps = _steps(legato, run.id)
    assert steps["study/plan[1]"].output == {"subtasks": []}
    assert "study/plan[2]" not in steps
    assert run.output == "[fake:smollm2] Sum up: alpha=ok"

