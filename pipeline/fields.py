"""The parts step specs are made of: the strict base, step ids, the fields every step has, a
model call, a gate, a fan-out's failure policy. Each kind's spec (legato.kinds.*) builds on
these."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

StepId = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Gate(Strict):
    """A check on a step's output; when it is false the chain stops with `message`."""

    check: str = Field(description="Jinja expression over output, input and outputs")
    message: str = "gate failed"


class ModelCall(Strict):
    """One model call: a model alias, a prompt template, optionally a system prompt and schema."""

    model: str
    prompt: str
    system: str | None = None
    output_schema: dict[str, Any] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    max_repairs: int = Field(2, ge=0, le=10, description="re-asks when output fails its schema")


class Concurrency(Strict):
    """At most `limit` steps with the same rendered `key` run at once, across the cluster
    (legato.concurrency); one over it waits, holding no worker thread."""

    key: str = Field(description="Jinja template over input and outputs, e.g. {{ input.account }}")
    limit: int = Field(ge=1)


class StepBase(Strict):
    """What every step has: an id, optionally a queue (else its enclosing step's), a gate and
    a concurrency key."""

    id: StepId
    queue: str | None = None
    gate: Gate | None = None
    concurrency: Concurrency | None = None


class FanOutPolicy(Strict):
    on_failure: Literal["fail", "skip"] = "fail"
    min_success: int | None = Field(None, ge=1, description="with on_failure: skip; default 1")
