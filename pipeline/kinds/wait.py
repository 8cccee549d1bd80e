"""`wait`: the run pauses, holding no task and no worker slot, until a signal arrives for this
step (`legato signal RUN STEP --data ...`); the signal's payload, checked against `schema`,
is the step's output. With a `timeout`, the sweeper ends the wait: `on_timeout: fail` fails the
step, `value` makes `default` its output, and a step id jumps: the steps between the wait and
that step (a later step of the same chain) are passed over. A wait with only a timeout is a
durable sleep.

Loading rules: a wait has a `schema` (what a signal must send) or a `timeout` (or both); a
`default` goes with `on_timeout: value` and must match the schema; `on_timeout` needs a
timeout; a jump names a later step of the wait's own chain. Parking and resuming are
pipeline/waits.py's; the task is tasks/waiting.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator

from legato import schema
from legato.context import Outcome
from legato.errors import SignalRefused, StepError
from legato.fields import StepBase
from legato.kinds.base import Kind
from legato.queues import CONTROL

if TYPE_CHECKING:
    from celery.canvas import Signature

    from legato.compile import Compiler


_STEP_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # fail and value match it too


class Wait(StepBase):
    kind: Literal["wait"] = "wait"
    schema_: dict[str, Any] | None = Field(
        None, validation_alias=AliasChoices("schema", "schema_"),
        description="JSON Schema a signal's payload must match; the payload is the output")
    timeout: float | None = Field(None, gt=0, description="seconds the step waits at most")
    on_timeout: str | None = Field(
        None, description="fail (the default with a schema), value: `default` is the output "
                          "(the default without one: a durable sleep), or a later step's id "
                          "in the same chain to jump to")
    default: Any = Field(None, description="the output when the timeout ends the wait (value)")
    description: str | None = Field(None, max_length=200,
                                    description="what the step waits for, shown while it does")

    @field_validator("on_timeout")
    @classmethod
    def _action(cls, value: str | None) -> str | None:
        if value is not None and not _STEP_ID.fullmatch(value):
            raise ValueError(f"on_timeout is fail, value or a step id, not {value!r}")
        return value

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
    def timeout_action(self) -> Literal["fail", "value", "jump"]:
        if self.on_timeout in ("fail", "value"):
            return self.on_timeout  # type: ignore[return-value]
        if self.on_timeout is not None:
            return "jump"
        return "fail" if self.schema_ is not None else "value"

    @property
    def jump_to(self) -> str | None:
        """The id of the step a timeout jumps to, if it does."""
        return self.on_timeout if self.timeout_action == "jump" else None


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
        detail = {"timed_out": True, "at": signal.get("at")}
        if step.jump_to:
            detail["jumped_to"] = step.jump_to
        return Outcome(step.default, detail=detail)
    detail = {"signal": {k: signal[k] for k in ("at", "by") if k in signal}}
    return Outcome(signal.get("data"), detail=detail)


def jump_problems(steps: list[Any], where: str) -> Iterator[tuple[str, str]]:
    """(place, problem) for each wait among `steps` (one chain's, in order, at `where`) whose
    timeout jumps somewhere other than a later step of this chain."""
    ids = [s.id for s in steps]
    for i, step in enumerate(steps):
        if isinstance(step, Wait) and step.jump_to and step.jump_to not in ids[i + 1:]:
            later = ", ".join(ids[i + 1:]) or "none"
            yield (f"{where}[{i}].on_timeout", f"a timeout jumps to a later step of the same "
                   f"chain: {step.jump_to!r} is not one (later steps: {later})")


def jump_targets(steps: list[Any]) -> set[str]:
    """The ids that waits among `steps` may jump to (each must start a task of its own)."""
    return {s.jump_to for s in steps if isinstance(s, Wait) and s.jump_to}


def jumps_past(signature: dict[str, Any], target: str) -> bool:
    """Whether a continuation's signature (a task of the chain, as JSON) is passed over on the
    way to the step `target` (its path): true unless it runs that step, or a step inside it."""
    def nodes(value: Any) -> Iterator[str]:
        if isinstance(value, dict):
            if isinstance(value.get("node"), str):
                yield value["node"]
            for v in value.values():
                yield from nodes(v)
        elif isinstance(value, list | tuple):
            for v in value:
                yield from nodes(v)

    return not any(n == target or n.startswith(target + "/") for n in nodes(signature))


class WaitKind(Kind):
    name = "wait"
    spec = Wait

    def schemas(self, step: Wait) -> Iterator[tuple[str, dict[str, Any]]]:
        if step.schema_ is not None:
            yield "schema", step.schema_

    def compile(self, step: Wait, path: str, queue: str | None, compiler: Compiler) -> Signature:
        return compiler.task("legato.wait", queue or CONTROL, path)
