"""`pipeline`: run another named pipeline as a child run of its own (own id, pinned spec,
journal), its input rendered from templates; the step parks until the child ends, and the
child's output becomes the step's output.

The child's id comes from the parent's run id and the step's path, so a redelivered step finds
the child it started and never starts a second one. What the step does when the child fails or
is cancelled is its `on_failure`: `fail` (the step fails with the child's error), `skip` (the
step succeeds with no output) or `fallback` (the step succeeds with `fallback` as its output).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from legato.context import Outcome, StepContext
from legato.errors import PermanentError
from legato.fields import StepBase
from legato.kinds.base import Kind
from legato.queues import CONTROL

if TYPE_CHECKING:
    from celery.canvas import Signature

    from legato.compile import Compiler
    from legato.envelope import RunRecord

# What a child pipeline is named by: a file stem in the pipelines directory (loader.PIPELINE_NAME)
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,99}$"
# A string that is one `{{ expression }}` and nothing else gives the expression's value as it is
# (a list stays a list, a number a number); any other string renders as text.
_WHOLE_EXPRESSION = re.compile(r"^\{\{(?!.*\{\{)(.*?)\}\}$", re.DOTALL)


class PipelineStep(StepBase):
    kind: Literal["pipeline"] = "pipeline"
    pipeline: str = Field(pattern=NAME_PATTERN,
                          description="a pipeline's name in the pipelines directory, never a path")
    input: dict[str, Any] = Field(
        default_factory=dict,
        description="the child's input; string values (nested ones too) are templates")
    on_failure: Literal["fail", "skip", "fallback"] = "fail"
    fallback: Any = Field(None, description="the step's output when the child does not succeed "
                          "(with on_failure: fallback)")

    @model_validator(mode="after")
    def _fallback_needs_policy(self) -> PipelineStep:
        given = self.fallback is not None  # (a null fallback is `skip`)
        if self.on_failure == "fallback" and not given:
            raise ValueError("on_failure `fallback` needs a `fallback` value (null is `skip`)")
        if given and self.on_failure != "fallback":
            raise ValueError("`fallback` is used only with on_failure: fallback")
        return self


def child_run_id(parent_run: str, path: str) -> str:
    """The child run a step starts: the same for every delivery of that step."""
    return hashlib.sha256(f"{parent_run}\x00{path}".encode()).hexdigest()[:32]


def _values(value: Any, field: str) -> Iterator[tuple[str, str]]:
    """(field, string) for every string inside a JSON value."""
    if isinstance(value, str):
        yield field, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _values(item, f"{field}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _values(item, f"{field}[{i}]")


def _template(text: str) -> tuple[str, bool]:
    """A string's template text, and whether it is a whole expression."""
    whole = _WHOLE_EXPRESSION.match(text.strip())
    return (whole.group(1).strip(), True) if whole else (text, False)


def render_input(value: Any, ctx: StepContext) -> Any:
    """The child's input: every string rendered (a whole `{{ expr }}` kept as its value)."""
    if isinstance(value, str):
        text, is_expr = _template(value)
        if not is_expr:
            return ctx.render(text)
        try:
            return ctx.evaluate(text)
        except PermanentError as exc:
            raise PermanentError(f"child input: {exc}") from None
    if isinstance(value, dict):
        return {k: render_input(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [render_input(v, ctx) for v in value]
    return value


def settle(step: PipelineStep, child: RunRecord) -> Outcome:
    """The step's outcome once its child run has ended: the child's output, or what
    `on_failure` says when the child failed or was cancelled."""
    detail = {"child_run": child.id, "child_status": child.status}
    if child.status == "succeeded":
        return Outcome(child.output, detail=detail)
    reason = f"child run {child.id} ({step.pipeline}) {child.status}: {child.error}"
    if step.on_failure == "fail":
        raise PermanentError(reason)
    detail["child_error"] = reason
    return Outcome(step.fallback if step.on_failure == "fallback" else None, detail=detail)


class PipelineKind(Kind):
    name = "pipeline"
    spec = PipelineStep

    def templates(self, step: PipelineStep) -> Iterator[tuple[str, str, bool]]:
        for field, text in _values(step.input, "input"):
            yield (field, *_template(text))

    def pipelines(self, step: PipelineStep) -> Iterator[tuple[str, str]]:
        yield "pipeline", step.pipeline

    def compile(self, step: PipelineStep, path: str, queue: str | None,
                compiler: Compiler) -> Signature:
        return compiler.task("legato.pipeline", queue or CONTROL, path)
