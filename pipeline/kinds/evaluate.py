"""`evaluate`: evaluator-optimizer — generate, have it judged, revise with the feedback — until
it passes, `max_rounds` is reached, or a round scores no better than the best so far. Each round
is a task at `<step>/round[i]` that becomes the next round; the one that stops closes the step.

A round's output is `{"candidate", "verdict", "best"}`; `verdict` follows VERDICT_SCHEMA and
`best` names the best round so far. `next_move` decides from it whether to stop and with what.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from legato import paths
from legato.context import Outcome, StepContext
from legato.fields import ModelCall, StepBase
from legato.kinds.base import Kind, call_templates
from legato.queues import LLM

if TYPE_CHECKING:
    from celery.canvas import Signature

    from legato.compile import Compiler

ROLES = ("generator", "evaluator")


class Evaluate(StepBase):
    """Evaluator-optimizer: generate, have it judged, revise with the feedback — until it passes,
    `max_rounds` is reached, or a round scores no better than the best so far."""

    kind: Literal["evaluate"] = "evaluate"
    generator: ModelCall
    evaluator: ModelCall
    max_rounds: int = Field(3, ge=1, le=20)
    min_score: float | None = Field(None, description="a score this high passes too")


VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "pass": {"type": "boolean"},
        "score": {"type": "number"},
        "feedback": {"type": "string"},
    },
    "required": ["pass", "score", "feedback"],
}


def evaluate_round(step: Evaluate, ctx: StepContext, round_no: int,
                   previous: dict[str, Any] | None) -> Outcome:
    """One round: the generator writes (seeing the last candidate and its feedback on a
    revision), the evaluator judges the candidate."""
    g, e = step.generator, step.evaluator
    last = previous or {}
    feedback = (last.get("verdict") or {}).get("feedback")
    draft = ctx.model_call(g.model, g.prompt, system=g.system, output_schema=g.output_schema,
                           params=g.params, round=round_no, previous=last.get("candidate"),
                           feedback=feedback)
    judged = ctx.model_call(e.model, e.prompt, system=e.system, output_schema=VERDICT_SCHEMA,
                            params=e.params, round=round_no, candidate=draft.output)
    verdict = judged.output
    best = last.get("best")
    if best is None or float(verdict["score"]) > best["score"]:
        best = {"round": round_no, "score": float(verdict["score"]), "candidate": draft.output}
    return Outcome({"candidate": draft.output, "verdict": verdict, "best": best},
                   draft.usage + judged.usage, {**draft.detail, **judged.detail})


def next_move(step: Evaluate, round_no: int, output: dict[str, Any],
              previous: dict[str, Any] | None) -> tuple[str, Any] | None:
    """None to go on with another round, or (why it stopped, the output to keep)."""
    verdict, best = output["verdict"], output["best"]
    score = float(verdict["score"])
    if verdict["pass"] or (step.min_score is not None and score >= step.min_score):
        return "passed", output["candidate"]
    if round_no + 1 >= step.max_rounds:
        return "max_rounds", best["candidate"]
    if previous is not None and score <= previous["best"]["score"]:
        return "no_improvement", best["candidate"]
    return None


def round_path(node: str, round_no: int) -> str:
    return paths.part(node, "round", round_no)


class EvaluateKind(Kind):
    name = "evaluate"
    spec = Evaluate

    def templates(self, step: Evaluate) -> Iterator[tuple[str, str, bool]]:
        for role in ROLES:
            yield from call_templates(getattr(step, role), role)

    def schemas(self, step: Evaluate) -> Iterator[tuple[str, dict[str, Any]]]:
        if step.generator.output_schema:  # the evaluator's schema is Legato's own
            yield "generator.output_schema", step.generator.output_schema

    def aliases(self, step: Evaluate) -> Iterator[tuple[str, str]]:
        for role in ROLES:
            yield f"{role}.model", getattr(step, role).model

    def compile(self, step: Evaluate, path: str, queue: str | None,
                compiler: Compiler) -> Signature:
        return compiler.task("legato.evaluate", queue or LLM, path, path=round_path(path, 0),
                             index=0)
