"""`route`: a classifier (a model, or a rule) picks one branch; the router task journals the
decision and becomes the chosen branch, on the branch's queue."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from legato import templates
from legato.context import Outcome, StepContext
from legato.errors import PermanentError
from legato.fields import StepBase, StepId, Strict
from legato.kinds.base import Child, Kind, call_templates
from legato.queues import CONTROL, LLM

if TYPE_CHECKING:
    from celery.canvas import Signature

    from legato.compile import Compiler
    from legato.spec import Step


class Classifier(Strict):
    """Picks a branch: a model (its output is constrained to the branch names) or a rule."""

    model: str | None = None
    prompt: str | None = None
    system: str | None = None
    rule: str | None = Field(None, description="Jinja expression that yields a branch name")
    min_confidence: float | None = Field(
        None, ge=0, le=1, description="below it, escalate (or take the route's default)")
    escalate_to: str | None = Field(None, description="a larger model alias to ask when unsure")

    @model_validator(mode="after")
    def _one_way(self) -> Classifier:
        if (self.rule is None) == (self.model is None):
            raise ValueError("give either `rule` or `model` with `prompt`")
        if self.model is not None and not self.prompt:
            raise ValueError("a model classifier needs a `prompt`")
        if self.min_confidence is not None and self.model is None:
            raise ValueError("`min_confidence` needs a model classifier")
        if self.escalate_to is not None and self.min_confidence is None:
            raise ValueError("`escalate_to` needs `min_confidence`")
        return self


class Route(StepBase):
    kind: Literal["route"] = "route"
    classifier: Classifier
    branches: dict[StepId, Step] = Field(min_length=1)
    default: str | None = None

    @model_validator(mode="after")
    def _default_is_a_branch(self) -> Route:
        if self.default is not None and self.default not in self.branches:
            raise ValueError(f"default {self.default!r} is not one of the branches")
        return self


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


def decide(route: Route, ctx: StepContext) -> Outcome:
    """The router's work: classify, then fall back to the default branch when the classifier
    is unsure or names no branch. Output: `{"branch": name}` (and the confidence)."""
    outcome = classify(route.classifier, list(route.branches), ctx)
    chosen, detail = outcome.output, outcome.detail
    if detail.get("low_confidence"):
        if route.default is None:
            raise PermanentError(f"classifier unsure ({detail['confidence']:.2f} < "
                                 f"{route.classifier.min_confidence}) and no default branch")
        detail["unsure_of"] = chosen
        chosen = route.default
    elif chosen not in route.branches:
        if route.default is None:
            raise PermanentError(f"classifier chose {chosen!r}, not a branch, and no default")
        detail["unmatched"] = chosen
        chosen = route.default
    decision = {"branch": chosen}
    if "confidence" in detail:
        decision["confidence"] = detail["confidence"]
    return Outcome(decision, outcome.usage, detail)


class RouteKind(Kind):
    name = "route"
    spec = Route
    passes_output = True

    def children(self, step: Route) -> Iterator[Child]:
        for name, branch in step.branches.items():
            yield Child(f"branches.{name}", branch, "inherit")

    def templates(self, step: Route) -> Iterator[tuple[str, str, bool]]:
        yield from call_templates(step.classifier, "classifier")
        if step.classifier.rule:
            yield "classifier.rule", step.classifier.rule, True

    def aliases(self, step: Route) -> Iterator[tuple[str, str]]:
        if step.classifier.model:
            yield "classifier.model", step.classifier.model
        if step.classifier.escalate_to:
            yield "classifier.escalate_to", step.classifier.escalate_to

    def compile(self, step: Route, path: str, queue: str | None, compiler: Compiler) -> Signature:
        by_model = step.classifier.model is not None
        return compiler.task("legato.route", queue or (LLM if by_model else CONTROL), path)
