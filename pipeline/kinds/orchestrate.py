"""`orchestrate`: a planner splits the job into subtasks (at most `max_subtasks` a round), a
worker call runs per subtask, concurrently, and a synthesizer combines their results; with
`max_rounds` > 1 the planner sees each round's results and may add subtasks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from legato import paths
from legato.context import Outcome, StepContext
from legato.fields import FanOutPolicy, ModelCall, StepBase
from legato.kinds.base import Kind, call_templates
from legato.queues import LLM

if TYPE_CHECKING:
    from celery.canvas import Signature

    from legato.compile import Compiler

ROLES = ("planner", "worker", "synthesizer")


class Orchestrate(StepBase, FanOutPolicy):
    kind: Literal["orchestrate"] = "orchestrate"
    planner: ModelCall
    worker: ModelCall
    synthesizer: ModelCall
    max_subtasks: int = Field(5, ge=1, le=100, description="per round")
    max_rounds: int = Field(
        1, ge=1, le=10, description="after each round the planner may add subtasks, seeing "
        "`results`; an empty list ends the rounds")


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


def worker_path(node: str, i: int) -> str:
    return paths.part(node, "worker", i)


def plan_path(node: str, round_no: int) -> str:
    return paths.part(node, "plan") if round_no == 0 else paths.part(node, "plan", round_no)


def workers(step: Orchestrate, path: str, subtasks: list[Any], queue: str | None,
            compiler: Compiler, *, start: int = 0, round_no: int = 0) -> Signature:
    """The fan-out: the new subtasks' workers (from `start`), in batches, then the synthesizer.
    Messages carry the round and each worker's index, never the subtasks' text (model output):
    workers read theirs from the plan records in the journal (`RunStore.subtasks`)."""
    from celery import chord, group

    queue = queue or LLM
    members = [compiler.envelope(path, path=worker_path(path, i), index=i,
                                 item={"round": round_no})
               for i in range(start, len(subtasks))]
    synthesize = compiler.task("legato.synthesize", queue, path, item={"round": round_no})
    return chord(group(compiler.members(members, queue)), synthesize)


class OrchestrateKind(Kind):
    name = "orchestrate"
    spec = Orchestrate

    def templates(self, step: Orchestrate) -> Iterator[tuple[str, str, bool]]:
        for role in ROLES:
            yield from call_templates(getattr(step, role), role)

    def schemas(self, step: Orchestrate) -> Iterator[tuple[str, dict[str, Any]]]:
        for role in ("worker", "synthesizer"):  # the planner's schema is Legato's own
            if schema := getattr(step, role).output_schema:
                yield f"{role}.output_schema", schema

    def aliases(self, step: Orchestrate) -> Iterator[tuple[str, str]]:
        for role in ROLES:
            yield f"{role}.model", getattr(step, role).model

    def compile(self, step: Orchestrate, path: str, queue: str | None,
                compiler: Compiler) -> Signature:
        return compiler.task("legato.plan", queue or LLM, path, path=plan_path(path, 0))
