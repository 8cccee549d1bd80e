"""`wait`: the run pauses, holding no task and no worker slot, until a signal arrives for this
step (`legato signal RUN STEP --data ...`); the signal's payload, checked against `schema`,
is the step's output. With a `timeout`, the sweeper ends the wait: `on_timeout: fail` fails the
step, `value` makes `default` its output. A wait with only a timeout is a durable sleep.

Loading rules: a wait has a `schema` (what a signal must send) or a `timeout` (or both); a
`default` goes with `on_timeout: value` and must match the schema; `on_timeout` needs a
timeout. Parking and resuming are pipeline/waits.py's; the task is tasks/waiting.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, Field, ValidationError, model_validator

from legato import schema
from legato.context import Outcome
from legato.errors import SignalRefused, StepError
from legato.fields import StepBase
from legato.kinds.base import Kind
from legato.queues import CONTROL

if TYPE_CHECKING:
    from celery.canvas import Signature

    from legato.compile import Compiler


class Wait(StepBase):
    kind: Literal["wait"] = "wait"
    schema_: dict[str, Any] | None = Field(
        None, validation_alias=AliasChoices("schema", "schema_"),
        description="JSON Schema a signal's payload must match; the payload is the output")
    timeout: float | None = Field(None, gt=0, description="seconds the step waits at most")
    on_timeout: Literal["fail", "value"] | None = Field(
        None, description="fail (the default with a schema) or value: `default` is the output "
                          "(the default without one: a durable sleep)")
    default: Any = Field(None, description="the output when the timeout ends the wait (value)")
    description: str | None = Field(None, max_length=200,
                                    description="what the step waits for, shown while it does")

    @model_validator(mode="after")
    def _rules(self) -> Wait:
        if self.schema_ is None and self.timeout is None:
            raise ValueError("a wait needs a `schema` (what a signal sends) or a `timeout` "
                             "(a durable sleep), or both")
        if self.on_timeout is not None and self.timeout is None:
            raise ValueError("`on_timeout` needs a `timeout`")
        # (a stored spec dumps `default: null`: only a default given counts)
        if self.default is not None and self.timeout_action != "value":
            raise ValueError("`default` is the output on timeout: it needs `on_timeout: value`")
        if self.schema_ is not None and self.default is not None:
            try:
                schema.validate(self.schema_, self.default)
            except ValidationError as exc:
                raise ValueError(f"`default` does not match the schema: "
                                 f"{schema.describe(exc)}") from None
        return self

    @property
    def timeout_action(self) -> Literal["fail", "value"]:
        return self.on_timeout or ("fail" if self.schema_ is not None else "value")


def awaiting(step: Wait, path: str) -> str:
    """What the run shows while the step waits."""
    if step.schema_ is None:
        return step.description or f"a timer at step {path}"
    return f"{step.description or 'a signal'} at step {path}"


def check_payload(step: Wait, data: Any, where: str) -> Any:
    """The payload as the step's output, or SignalRefused naming the field (`where`: run/step)."""
    if step.schema_ is None:
        return data
    try:
        schema.validate(step.schema_, data)
    except ValidationError as exc:
        raise SignalRefused(f"signal for {where} refused: {schema.describe(exc)}") from None
    return data


def outcome(step: Wait, signal: dict[str, Any]) -> Outcome:
    """The step's outcome from the signal stored for it (a timeout's has no payload)."""
    if signal.get("timeout"):
        if step.timeout_action == "fail":
            raise StepError(f"timed out: no signal within {step.timeout:g}s")
        return Outcome(step.default, detail={"timed_out": True, "at": signal.get("at")})
    detail = {"signal": {k: signal[k] for k in ("at", "by") if k in signal}}
    return Outcome(signal.get("data"), detail=detail)


class WaitKind(Kind):
    name = "wait"
    spec = Wait

    def schemas(self, step: Wait) -> Iterator[tuple[str, dict[str, Any]]]:
        if step.schema_ is not None:
            yield "schema", step.schema_

    def compile(self, step: Wait, path: str, queue: str | None, compiler: Compiler) -> Signature:
        return compiler.task("legato.wait", queue or CONTROL, path)
