"""What each step kind does, as plain Python: fan-in policy, aggregation, gates, plans, routing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from legato import context
from legato.context import StepContext, check_gate
from legato.envelope import StepRef, StepResult, Usage
from legato.errors import GateFailed, PermanentError, StepError
from legato.kinds import llm, tool
from legato.kinds.base import fan_in
from legato.kinds.orchestrate import plan
from legato.kinds.parallel import aggregate
from legato.kinds.route import classify
from legato.models import Answer
from legato.spec import (
    Aggregate,
    Classifier,
    Gate,
    ModelCall,
    ModelConfig,
    Orchestrate,
    Tool,
)


def ok(path: str, output: Any) -> StepResult:
    return StepResult(path=path, status="succeeded", output=output)


def failed(path: str, error: str = "boom") -> StepResult:
    return StepResult(path=path, status="failed", error=error)


@pytest.fixture
def ctx() -> StepContext:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no HTTP expected, got {request.url}")

    return StepContext(
        input={"ticket": "refund please", "n": 3},
        outputs={"summary": "a summary"},
        models={"small": ModelConfig(base_url="http://model.test/v1", model="tiny")},
        http=httpx.Client(transport=httpx.MockTransport(refuse)),
        step=StepRef(run_id="RUN", path="step"),
    )


class FakeAsk:
    """Stands in for `legato.models.ask`, recording what it was asked."""

    def __init__(self, *outputs: Any) -> None:
        self.outputs = list(outputs)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, client: httpx.Client, cfg: ModelConfig, prompt: str, **kw: Any) -> Answer:
        self.calls.append({"cfg": cfg, "prompt": prompt, **kw})
        return Answer(self.outputs.pop(0), Usage(prompt_tokens=10, completion_tokens=5, calls=1))


@pytest.fixture
def fake_ask(monkeypatch: pytest.MonkeyPatch) -> FakeAsk:
    fake = FakeAsk()
    monkeypatch.setattr(context, "ask", fake)
    return fake


# -- fan_in ------------------------------------------------------------------------------------


def test_fan_in_fail_policy_raises_on_any_failure() -> None:
    results = [ok("p/a", 1), failed("p/b", "timed out"), ok("p/c", 3)]
    with pytest.raises(StepError, match=r"1 of 3 branches failed; first, p/b: timed out"):
        fan_in(results, on_failure="fail", min_success=None)


def test_fan_in_fail_policy_keeps_all_when_all_succeed() -> None:
    results = [ok("p/a", 1), ok("p/b", 2)]
    assert fan_in(results, on_failure="fail", min_success=None) == (results, [])


def test_fan_in_skip_policy_drops_failures() -> None:
    results = [ok("p/a", 1), failed("p/b"), ok("p/c", 3)]
    kept, dropped = fan_in(results, on_failure="skip", min_success=None)
    assert [r.path for r in kept] == ["p/a", "p/c"]
    assert [r.path for r in dropped] == ["p/b"]


def test_fan_in_skip_policy_needs_one_success_by_default() -> None:
    with pytest.raises(StepError, match=r"only 0 of 2 branches succeeded, 1 needed"):
        fan_in([failed("p/a", "x"), failed("p/b", "y")], on_failure="skip", min_success=None)


def test_fan_in_min_success() -> None:
    results = [ok("p/a", 1), failed("p/b", "bad b"), failed("p/c", "bad c"), ok("p/d", 4)]
    kept, _ = fan_in(results, on_failure="skip", min_success=2)
    assert len(kept) == 2
    with pytest.raises(StepError, match=r"only 2 of 4 branches succeeded, 3 needed "
                                        r"\(p/b: bad b; p/c: bad c\)"):
        fan_in(results, on_failure="skip", min_success=3)


# -- aggregate ---------------------------------------------------------------------------------


def test_aggregate_concat_joins_text_and_json(ctx: StepContext) -> None:
    kept = [ok("p/a", "one"), ok("p/b", {"k": "é"}), ok("p/c", 3)]
    assert aggregate(Aggregate(), kept, ctx).output == 'one\n\n{"k": "é"}\n\n3'
    assert aggregate(Aggregate(separator=" | "), kept, ctx).output == 'one | {"k": "é"} | 3'


def test_aggregate_merge_combines_dicts_and_names_the_rest_by_step(ctx: StepContext) -> None:
    kept = [ok("p/a", {"x": 1, "y": 1}), ok("p/b", {"y": 2}), ok("p/c", "text")]
    assert aggregate(Aggregate(method="merge"), kept, ctx).output == {"x": 1, "y": 2, "c": "text"}


def test_aggregate_majority(ctx: StepContext) -> None:
    kept = [ok(f"v/j[{i}]", {"s": s}) for i, s in enumerate(["neg", "pos", "pos"])]
    outcome = aggregate(Aggregate(method="majority"), kept, ctx)
    assert outcome.output == {"s": "pos"}
    assert outcome.detail == {"votes": 2, "of": 3}


def test_aggregate_majority_tie_goes_to_the_first_seen(ctx: StepContext) -> None:
    kept = [ok("v/j[0]", "b"), ok("v/j[1]", "a"), ok("v/j[2]", "a"), ok("v/j[3]", "b")]
    assert aggregate(Aggregate(method="majority"), kept, ctx).output == "b"
    kept.reverse()
    assert aggregate(Aggregate(method="majority"), kept, ctx).output == "b"
    kept = [ok("v/j[0]", "a"), ok("v/j[1]", "b")]
    assert aggregate(Aggregate(method="majority"), kept, ctx).output == "a"


def test_aggregate_majority_compares_dicts_by_content(ctx: StepContext) -> None:
    kept = [ok("v/j[0]", {"a": 1, "b": 2}), ok("v/j[1]", {"b": 2, "a": 1}), ok("v/j[2]", {"a": 0})]
    outcome = aggregate(Aggregate(method="majority"), kept, ctx)
    assert outcome.output == {"a": 1, "b": 2} and outcome.detail["votes"] == 2


def test_aggregate_with_a_model_sees_results_and_sections(
    ctx: StepContext, fake_ask: FakeAsk
) -> None:
    fake_ask.outputs = ["combined"]
    agg = Aggregate(method="llm", model="small",
                    prompt="{% for k, v in sections.items() %}{{ k }}={{ v }};{% endfor %}"
                           "{{ results | length }}")
    outcome = aggregate(agg, [ok("p/a", "A"), ok("p/b", "B")], ctx)
    assert outcome.output == "combined" and outcome.usage.calls == 1
    assert fake_ask.calls[0]["prompt"] == "a=A;b=B;2"


# -- gates -------------------------------------------------------------------------------------


def test_gate_passes(ctx: StepContext) -> None:
    check_gate(Gate(check="output >= 3 and input.n == 3"), 5, ctx)


def test_gate_fails_with_its_message(ctx: StepContext) -> None:
    with pytest.raises(GateFailed, match="gate stopped the chain: too short"):
        check_gate(Gate(check="output >= 3", message="too short"), 2, ctx)


def test_gate_that_cannot_evaluate_is_a_permanent_error_not_a_quiet_fail(
    ctx: StepContext,
) -> None:
    with pytest.raises(PermanentError, match="gate check failed to evaluate"):
        check_gate(Gate(check="output.missing"), {"present": 1}, ctx)


# -- model calls, plans, routing ---------------------------------------------------------------


def _orchestrate(max_subtasks: int) -> Orchestrate:
    return Orchestrate(
        id="o", max_subtasks=max_subtasks,
        planner=ModelCall(model="small", prompt="at most {{ max_subtasks }}: {{ input.ticket }}"),
        worker=ModelCall(model="small", prompt="w"),
        synthesizer=ModelCall(model="small", prompt="s"),
    )


def test_plan_truncates_to_max_subtasks(ctx: StepContext, fake_ask: FakeAsk) -> None:
    subtasks = [{"title": f"t{i}", "instructions": "do"} for i in range(5)]
    fake_ask.outputs = [{"subtasks": subtasks}]
    outcome = plan(_orchestrate(3), ctx)
    assert outcome.output == {"subtasks": subtasks[:3]}
    assert outcome.detail["truncated_from"] == 5
    call = fake_ask.calls[0]
    assert call["prompt"] == "at most 3: refund please"
    assert call["output_schema"]["required"] == ["subtasks"]


def test_plan_within_the_cap_is_kept_whole(ctx: StepContext, fake_ask: FakeAsk) -> None:
    subtasks = [{"title": "only", "instructions": "do"}]
    fake_ask.outputs = [{"subtasks": subtasks}]
    outcome = plan(_orchestrate(3), ctx)
    assert outcome.output == {"subtasks": subtasks} and "truncated_from" not in outcome.detail


def test_classify_by_rule_needs_no_model(ctx: StepContext) -> None:
    rule = Classifier(rule="'billing' if 'refund' in input.ticket else 'general'")
    outcome = classify(rule, ["billing", "general"], ctx)
    assert (outcome.output, outcome.detail) == ("billing", {"by": "rule"})


def test_classify_by_model_constrains_the_answer_to_the_branches(
    ctx: StepContext, fake_ask: FakeAsk
) -> None:
    fake_ask.outputs = [{"branch": "general"}]
    model = Classifier(model="small",
                       prompt="one of {{ branches | join(',') }}: {{ input.ticket }}")
    outcome = classify(model, ["billing", "general"], ctx)
    assert outcome.output == "general" and outcome.detail["by"] == "model"
    call = fake_ask.calls[0]
    assert call["prompt"] == "one of billing,general: refund please"
    assert call["output_schema"]["properties"]["branch"]["enum"] == ["billing", "general"]
    assert call["step_tag"] == "RUN/step"


def test_fan_out_instances_differ_by_seed(ctx: StepContext, fake_ask: FakeAsk) -> None:
    fake_ask.outputs = ["a", "b"]
    call = ModelCall(model="small", prompt="p", params={"seed": 10, "temperature": 0.7})
    llm.run(call, ctx)
    ctx.index = 2
    llm.run(call, ctx)
    assert [c["params"]["seed"] for c in fake_ask.calls] == [10, 12]
    assert call.params == {"seed": 10, "temperature": 0.7}  # the spec is not mutated


def test_a_template_error_is_a_permanent_error(ctx: StepContext, fake_ask: FakeAsk) -> None:
    with pytest.raises(PermanentError, match="template failed: UndefinedError"):
        llm.run(ModelCall(model="small", prompt="{{ input.nope }}"), ctx)
    assert fake_ask.calls == []


# -- tools -------------------------------------------------------------------------------------


def test_tool_arguments_are_rendered_then_checked(ctx: StepContext) -> None:
    step = Tool(id="t", tool="word_count", args={"text": "{{ outputs.summary }} here"})
    assert tool.run(step, ctx).output == 3


def test_tool_that_refuses_its_arguments_is_a_permanent_error(ctx: StepContext) -> None:
    step = Tool(id="t", tool="keywords", args={"text": "x", "top": "many"})
    with pytest.raises(PermanentError, match="tool 'keywords' refused its arguments"):
        tool.run(step, ctx)


def test_unknown_tool_at_run_time_is_a_permanent_error(ctx: StepContext) -> None:
    with pytest.raises(PermanentError, match="unknown tool 'nope'"):
        tool.run(Tool(id="t", tool="nope"), ctx)


def test_a_rule_that_fails_to_evaluate_is_a_permanent_error(ctx: StepContext) -> None:
    from legato.errors import PermanentError
    from legato.spec import Classifier

    with pytest.raises(PermanentError, match="route rule failed to evaluate"):
        classify(Classifier(rule="input.categry.name"), ["a", "b"], ctx)
