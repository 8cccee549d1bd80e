"""What each step kind does, as plain Python: no Celery, no Redis.

Tasks hand in a `StepContext` (the job input, the outputs the step reads, the models, the process's
model transport) and get back an `Outcome`. Canvas shapes live in compile.py; journaling in tasks/.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from legato import templates
from legato.envelope import StepResult, Usage
from legato.errors import GateFailed, PermanentError, StepError
from legato.models import Completion, Gateway, RunScope, ask
from legato.models.transport import Client
from legato.spec import Aggregate, Classifier, Gate, ModelCall, ModelConfig, Orchestrate, Tool
from legato.tools import get_tool
from legato.tools.registry import ToolNotFound
from legato.tools.runner import call_tool, idempotency_key
from legato.tools.toolbox import Toolbox


@dataclass
class Outcome:
    output: Any
    usage: Usage = field(default_factory=Usage)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepContext:
    input: Any
    outputs: dict[str, Any]
    models: dict[str, ModelConfig]
    http: Client  # the process's model transport (or a plain httpx.Client)
    step_tag: str
    item: Any = None
    index: int | None = None
    gateway: Gateway | None = None  # the process's; None: a bare one (no Redis policies)
    run: RunScope | None = None
    tools: Toolbox | None = None  # the process's; None: the installed one (tools/toolbox.py)

    def variables(self, **extra: Any) -> dict[str, Any]:
        return {"input": self.input, "outputs": self.outputs, "item": self.item,
                "index": self.index, **extra}

    def render(self, source: str, **extra: Any) -> str:
        try:
            return templates.render(source, self.variables(**extra))
        except Exception as exc:  # undefined names, sandbox violations, filter errors
            raise PermanentError(f"template failed: {type(exc).__name__}: {exc}") from exc

    def model_call(
        self, model: str, prompt: str, *, system: str | None = None,
        output_schema: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
        max_repairs: int = 2, **extra: Any,
    ) -> Outcome:
        """One model answer through the process's gateway (retries, fallbacks, breaker, rate
        limits, budget, cache); attempts and repairs go to the step record's `detail`."""
        params = dict(params or {})
        if self.index is not None:  # fan-out instances of one step differ by seed
            params["seed"] = int(params.get("seed", 0)) + self.index
        gateway = self.gateway or Gateway(self.http)
        trace: list[dict[str, Any]] = []

        def complete(messages: list[dict[str, Any]], schema: dict[str, Any] | None,
                     call_params: dict[str, Any] | None) -> Completion:
            return gateway.complete(self.models, model, messages, schema=schema,
                                    params=call_params, step_tag=self.step_tag, run=self.run,
                                    trace=trace)

        try:
            answer = ask(
                self.http, self.models[model], self.render(prompt, **extra),
                system=self.render(system, **extra) if system else None,
                output_schema=output_schema, params=params, step_tag=self.step_tag,
                max_repairs=max_repairs, complete=complete,
            )
        except StepError as exc:  # the trace rides on the error, for the failed step's record
            exc.detail = {"model_calls": trace,  # type: ignore[attr-defined]
                          **({"repairs": exc.attempts} if hasattr(exc, "attempts") else {})}
            raise
        detail: dict[str, Any] = {"model_calls": trace} if trace else {}
        if answer.attempts:
            detail["repairs"] = answer.attempts
        return Outcome(answer.output, answer.usage, detail)


def run_llm(call: ModelCall, ctx: StepContext, **extra: Any) -> Outcome:
    return ctx.model_call(call.model, call.prompt, system=call.system,
                          output_schema=call.output_schema, params=call.params,
                          max_repairs=call.max_repairs, **extra)


def run_tool(step: Tool, ctx: StepContext) -> Outcome:
    try:
        spec = get_tool(step.tool)
    except ToolNotFound as exc:
        raise PermanentError(exc.args[0]) from None
    args = {k: ctx.render(v) if isinstance(v, str) else v for k, v in step.args.items()}
    run_id, _, path = ctx.step_tag.partition("/")
    return Outcome(call_tool(spec, args, key=idempotency_key(run_id, path, "0"), tools=ctx.tools))


def check_gate(gate: Gate, output: Any, ctx: StepContext) -> None:
    try:
        passed = templates.evaluate(gate.check, ctx.variables(output=output))
    except Exception as exc:
        raise PermanentError(f"gate check failed to evaluate: {exc}") from exc
    if not passed:
        raise GateFailed(f"gate stopped the chain: {gate.message}")


def classify(classifier: Classifier, branches: list[str], ctx: StepContext) -> Outcome:
    """Pick a branch. A model's answer is constrained to the branch names by its schema; with
    `min_confidence` it also says how sure it is, and an unsure answer is escalated to a larger
    model, or (detail `low_confidence`) left to the route's default branch."""
    if classifier.rule is not None:
        try:
            branch = templates.evaluate(classifier.rule, ctx.variables())
        except Exception as exc:
            raise PermanentError(f"route rule failed to evaluate: {exc}") from exc
        return Outcome(str(branch), detail={"by": "rule"})
    assert classifier.model and classifier.prompt
    threshold = classifier.min_confidence
    schema = _branch_schema(branches, with_confidence=threshold is not None)

    def ask_model(alias: str) -> Outcome:
        return ctx.model_call(alias, classifier.prompt or "", system=classifier.system,
                              output_schema=schema, branches=branches)

    first = ask_model(classifier.model)
    detail: dict[str, Any] = {"by": "model", **first.detail}
    branch, usage = first.output["branch"], first.usage
    if threshold is None:
        return Outcome(branch, usage, detail)
    confidence = float(first.output["confidence"])
    if confidence < threshold and classifier.escalate_to:
        detail["escalated"] = {"from": classifier.model, "branch": branch,
                               "confidence": confidence}
        second = ask_model(classifier.escalate_to)
        branch, usage = second.output["branch"], usage + second.usage
        confidence = float(second.output["confidence"])
    detail["confidence"] = confidence
    if confidence < threshold:
        detail["low_confidence"] = True
    return Outcome(branch, usage, detail)


def _branch_schema(branches: list[str], *, with_confidence: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {"branch": {"type": "string", "enum": branches}}
    if with_confidence:
        properties["confidence"] = {"type": "number", "minimum": 0, "maximum": 1}
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def fan_in(
    results: list[StepResult], *, on_failure: str, min_success: int | None
) -> tuple[list[StepResult], list[StepResult]]:
    """Split branch results into (kept, failed) under the step's policy; raise if it fails."""
    kept = [r for r in results if r.ok]
    failed = [r for r in results if r.status == "failed"]  # skipped voters count for neither
    if on_failure == "fail" and failed:
        first = failed[0]
        raise StepError(f"{len(failed)} of {len(results)} branches failed; first, "
                        f"{first.path}: {first.error}")
    needed = min_success or 1
    if len(kept) < needed:
        reasons = "; ".join(f"{r.path}: {r.error}" for r in failed[:3])
        raise StepError(f"only {len(kept)} of {len(results)} branches succeeded, "
                        f"{needed} needed ({reasons})")
    return kept, failed


def aggregate(agg: Aggregate, kept: list[StepResult], ctx: StepContext) -> Outcome:
    outputs = [r.output for r in kept]
    if agg.method == "concat":
        return Outcome(agg.separator.join(_text(o) for o in outputs))
    if agg.method == "merge":
        merged: dict[str, Any] = {}
        for r in kept:
            if isinstance(r.output, dict):
                merged.update(r.output)
            else:
                merged[r.path.rsplit("/", 1)[-1]] = r.output
        return Outcome(merged)
    if agg.method == "majority":
        counts = Counter(json.dumps(o, sort_keys=True) for o in outputs)
        winner, votes = max(counts.items(), key=lambda kv: kv[1])  # first seen wins a tie
        return Outcome(json.loads(winner), detail={"votes": votes, "of": len(outputs)})
    assert agg.model and agg.prompt
    sections = {r.path.rsplit("/", 1)[-1]: r.output for r in kept}
    return ctx.model_call(agg.model, agg.prompt, system=agg.system,
                          output_schema=agg.output_schema, results=outputs, sections=sections)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def plan_schema(*, may_be_done: bool = False) -> dict[str, Any]:
    subtask = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "instructions": {"type": "string"}},
        "required": ["title", "instructions"],
    }
    return {
        "type": "object",
        "properties": {"subtasks": {"type": "array", "items": subtask,
                                    "minItems": 0 if may_be_done else 1}},
        "required": ["subtasks"],
    }


def plan(step: Orchestrate, ctx: StepContext, *, round_no: int = 0,
         results: list[dict[str, Any]] | None = None) -> Outcome:
    """Ask the planner for subtasks; keep at most `max_subtasks` of them. After the first round
    it sees `results` so far and may return none: the work is done."""
    p = step.planner
    outcome = ctx.model_call(p.model, p.prompt, system=p.system,
                             output_schema=plan_schema(may_be_done=round_no > 0),
                             params=p.params, max_repairs=p.max_repairs,
                             max_subtasks=step.max_subtasks, round=round_no,
                             results=results or [])
    subtasks = outcome.output["subtasks"]
    if len(subtasks) > step.max_subtasks:
        outcome.detail["truncated_from"] = len(subtasks)
        subtasks = subtasks[: step.max_subtasks]
    return Outcome({"subtasks": subtasks}, outcome.usage, outcome.detail)
