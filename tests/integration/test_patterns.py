"""Every pattern end to end: real Redis, real worker processes, the fake model over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

from legato import Chain, Gate, Legato, Llm, Parallel, Pipeline, Route, Tool
from legato.spec import Aggregate, Classifier

ROOT = Path(__file__).resolve().parents[2]


def example_input(name: str) -> dict:
    return json.loads((ROOT / "pipelines" / f"{name}.input.json").read_text())


def steps_by_path(legato: Legato, run_id: str) -> dict:
    return {s.path: s for s in legato.steps(run_id)}


def test_chain_runs_steps_in_order_and_renders_the_output(legato, fake):
    run_id = legato.submit("summarize", example_input("summarize"))
    run = legato.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    steps = steps_by_path(legato, run_id)
    assert list(steps) == ["summary", "length", "headline"]
    assert [steps[p].kind for p in steps] == ["llm", "tool", "llm"]
    assert steps["summary"].queue == "legato.llm" and steps["length"].queue == "legato.tools"
    assert steps["summary"].ended_at <= steps["length"].started_at <= steps["headline"].started_at
    assert steps["length"].output == len(steps["summary"].output.split())
    # The headline's prompt saw the summary's output: the fake model echoes its prompt.
    assert "Write a headline" in steps["headline"].output
    assert run.output == f"{steps['headline'].output}\n\n{steps['summary'].output}"
    assert run.usage.calls == 2 and run.usage.prompt_tokens > 0
    by_step = fake.stats()["by_step"]
    assert by_step == {f"{run_id}/summary": 1, f"{run_id}/headline": 1}


def test_a_gate_stops_the_chain_with_its_reason(legato, fake):
    pipeline = Pipeline(name="gated", steps=[
        Llm(id="draft", model="small", prompt="Say something about {{ input.topic }}"),
        Tool(id="words", tool="word_count", args={"text": "{{ outputs.draft }}"},
             gate=Gate(check="output > 1000", message="the draft is too short")),
        Llm(id="polish", model="small", prompt="Polish: {{ outputs.draft }}"),
    ])
    run = legato.wait(legato.submit(pipeline, {"topic": "gates"}), timeout=30)

    assert run.status == "failed"
    assert run.error == "words: gate stopped the chain: the draft is too short"
    steps = steps_by_path(legato, run.id)
    assert steps["words"].status == "failed" and steps["words"].error_type == "GateFailed"
    assert "polish" not in steps
    assert fake.stats()["requests"] == 1


def test_route_dispatches_the_branch_to_its_own_queue_and_worker(legato, fake):
    fake.script({"rules": [{"match": {"system_contains": "classify support tickets"},
                            "reply": {"branch": "billing"}}]})
    run_id = legato.submit("support_triage", example_input("support_triage"))
    run = legato.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    steps = steps_by_path(legato, run_id)
    assert steps["triage"].output == {"branch": "billing"}
    billing = steps["triage/billing"]
    assert billing.queue == "legato.branch.billing"
    assert billing.worker.startswith("branches@")
    assert steps["triage"].worker.startswith("main@")
    assert set(steps) == {"triage", "triage/billing"}  # the other branches never ran
    assert run.output == billing.output and "billing question" in run.output


def test_route_by_rule_and_unknown_choice_falls_back_to_default(legato, fake):
    def pipeline(rule: str) -> Pipeline:
        return Pipeline(name="by_rule", steps=[Route(
            id="pick", classifier=Classifier(rule=rule), default="slow",
            branches={
                "fast": Llm(id="fast", model="small", prompt="fast {{ input.n }}"),
                "slow": Llm(id="slow", model="small", prompt="slow {{ input.n }}",
                            queue="legato.branch.technical"),
            })])

    fast = legato.wait(legato.submit(pipeline("'fast' if input.n < 10 else 'slow'"), {"n": 3}),
                       timeout=30)
    assert fast.status == "succeeded" and fast.output.endswith("fast 3")
    odd = legato.wait(legato.submit(pipeline("'nowhere'"), {"n": 50}), timeout=30)
    assert odd.status == "succeeded" and odd.output.endswith("slow 50")
    steps = steps_by_path(legato, odd.id)
    assert steps["pick"].detail["unmatched"] == "nowhere"
    assert steps["pick/slow"].queue == "legato.branch.technical"


def test_parallel_sections_fan_out_and_aggregate_with_a_model(legato, fake):
    fake.script({"rules": [
        {"match": {"contains": f"affect {who}?"}, "reply": f"{who} view"}
        for who in ("customers", "employees", "investors")]})
    run_id = legato.submit("stakeholders", example_input("stakeholders"))
    run = legato.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    steps = steps_by_path(legato, run_id)
    sections = ["views/customers", "views/employees", "views/investors"]
    assert all(steps[s].status == "succeeded" for s in sections)
    views = steps["views"]
    assert views.detail["succeeded"] == 3 and views.detail["failed"] == []
    assert views.started_at >= max(steps[s].ended_at for s in sections)
    for who in ("customers", "employees", "investors"):  # the synthesizer saw every section
        assert f"- {who}: {who} view" in run.output
    assert run.usage.calls == 4


def test_parallel_skip_policy_degrades_when_a_branch_fails(legato, fake):
    fake.script({"faults": [{"kind": "status", "code": 400, "body": "bad request",
                             "match": {"contains": "affect investors"}}]})
    run = legato.wait(legato.submit("stakeholders", example_input("stakeholders")), timeout=30)

    assert run.status == "succeeded", run.error  # on_failure: skip, min_success: 2
    steps = steps_by_path(legato, run.id)
    assert steps["views/investors"].status == "failed"
    assert steps["views/investors"].error_type == "PermanentError"
    assert steps["views"].detail["failed"] == ["views/investors"]
    assert "investors" not in run.output


def _sections(on_failure: str, min_success: int | None = None) -> Pipeline:
    return Pipeline(name=f"policy_{on_failure}", steps=[
        Parallel(id="fan", on_failure=on_failure, min_success=min_success, sections=[
            Llm(id="a", model="small", prompt="alpha {{ input.x }}"),
            Tool(id="b", tool="explode", args={"text": "{{ input.x }}"}),
            Llm(id="c", model="small", prompt="gamma {{ input.x }}"),
        ], aggregate=Aggregate(method="merge")),
        Llm(id="after", model="small", prompt="after {{ outputs.fan }}"),
    ])


def test_parallel_fail_policy_fails_the_run_with_the_branch_error(legato, fake):
    run = legato.wait(legato.submit(_sections("fail"), {"x": "1"}), timeout=30)

    assert run.status == "failed"
    assert "fan: 1 of 3 branches failed" in run.error and "exploded" in run.error
    assert "after" not in steps_by_path(legato, run.id)


def test_parallel_min_success_not_met_fails_and_met_succeeds(legato, fake):
    strict = legato.wait(legato.submit(_sections("skip", 3), {"x": "2"}), timeout=30)
    assert strict.status == "failed" and "only 2 of 3 branches succeeded, 3 needed" in strict.error

    lenient = legato.wait(legato.submit(_sections("skip", 2), {"x": "3"}), timeout=30)
    assert lenient.status == "succeeded", lenient.error
    fan = steps_by_path(legato, lenient.id)["fan"]
    assert fan.output == {"a": "[fake:smollm2] alpha 3", "c": "[fake:smollm2] gamma 3"}


def test_vote_takes_the_majority(legato, fake):
    # Under the default policy (fail), one refused voter fails the vote, readably.
    fake.script({"faults": [{"kind": "status", "code": 400, "times": 1}]})
    run = legato.wait(legato.submit("sentiment_vote", example_input("sentiment_vote")),
                      timeout=30)
    assert run.status == "failed" and "1 of 3 branches failed" in run.error

    fake.reset()
    run = legato.wait(legato.submit("sentiment_vote", example_input("sentiment_vote")),
                      timeout=30)
    assert run.status == "succeeded", run.error
    steps = steps_by_path(legato, run.id)
    voters = [p for p in steps if p.startswith("sentiment/judge[")]
    assert sorted(voters) == [f"sentiment/judge[{i}]" for i in range(3)]
    assert run.output == steps["sentiment/judge[0]"].output
    assert run.output["sentiment"] in ("positive", "negative", "neutral")
    assert steps["sentiment"].detail["votes"] == 3


def test_orchestrate_plans_fans_out_and_synthesizes(legato, fake):
    subtasks = [{"title": f"part {i}", "instructions": f"look at {i}"} for i in range(5)]
    fake.script({"rules": [
        {"match": {"contains": "research subtasks"}, "reply": {"subtasks": subtasks}},
        {"match": {"contains": "Answer in two sentences"}, "reply": "found it"},
    ]})
    run_id = legato.submit("research_brief", example_input("research_brief"))
    run = legato.wait(run_id, timeout=30)

    assert run.status == "succeeded", run.error
    steps = steps_by_path(legato, run_id)
    assert steps["brief/plan"].detail["truncated_from"] == 5  # max_subtasks: 3
    workers = sorted(p for p in steps if p.startswith("brief/worker["))
    assert workers == ["brief/worker[0]", "brief/worker[1]", "brief/worker[2]"]
    assert steps["brief/worker[1]"].output == "found it"
    assert "- part 2: found it" in run.output and "part 3" not in run.output
    assert fake.stats()["requests"] == 5  # plan + 3 workers + synthesizer


def test_orchestrate_keeps_partial_results_when_a_worker_fails(legato, fake):
    subtasks = [{"title": "ok one", "instructions": "a"}, {"title": "doomed", "instructions": "b"}]
    fake.script({
        "rules": [{"match": {"contains": "research subtasks"}, "reply": {"subtasks": subtasks}}],
        "faults": [{"kind": "status", "code": 400, "match": {"contains": "doomed"}}],
    })
    run = legato.wait(legato.submit("research_brief", example_input("research_brief")),
                      timeout=30)

    assert run.status == "succeeded", run.error  # on_failure: skip
    steps = steps_by_path(legato, run.id)
    assert steps["brief/worker[1]"].status == "failed"
    assert steps["brief"].detail["failed"] == ["brief/worker[1]"]
    assert "ok one" in run.output and "doomed" not in run.output


def test_a_failing_step_leaves_a_readable_error_never_a_running_run(legato, fake):
    pipeline = Pipeline(name="boom", steps=[
        Chain(id="outer", steps=[Tool(id="kaboom", tool="explode", args={"text": "x"})]),
        Llm(id="never", model="small", prompt="never"),
    ])
    run = legato.wait(legato.submit(pipeline, {}), timeout=30)

    assert run.status == "failed"
    assert run.error.startswith("outer/kaboom: tool 'explode' raised RuntimeError: exploded")
    assert run.finished_at is not None
    assert fake.stats()["requests"] == 0
