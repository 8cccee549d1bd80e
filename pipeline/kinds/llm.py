"""`llm`: one model call — a prompt, optionally a system prompt and an output schema."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from legato.context import Outcome, StepContext
from legato.fields import ModelCall, StepBase
from legato.kinds.base import Kind, call_templates
from legato.queues import LLM

if TYPE_CHECKING:
    from celery.canvas import Signature

    from legato.compile import Compiler


class Llm(StepBase, ModelCall):
    kind: Literal["llm"] = "llm"


def run(call: ModelCall, ctx: StepContext, **extra: Any) -> Outcome:
    """One model answer for `call` (a step, or a composite's planner, worker, ...)."""
    return ctx.model_call(call.model, call.prompt, system=call.system,
                          output_schema=call.output_schema, params=call.params,
                          max_repairs=call.max_repairs, **extra)


class LlmKind(Kind):
    name = "llm"
    spec = Llm

    def templates(self, step: Llm) -> Iterator[tuple[str, str, bool]]:
        return call_templates(step, "")

    def schemas(self, step: Llm) -> Iterator[tuple[str, dict[str, Any]]]:
        if step.output_schema:
            yield "output_schema", step.output_schema

    def aliases(self, step: Llm) -> Iterator[tuple[str, str]]:
        yield "model", step.model

    def compile(self, step: Llm, path: str, queue: str | None, compiler: Compiler) -> Signature:
        return compiler.task("legato.llm", queue or LLM, path)
