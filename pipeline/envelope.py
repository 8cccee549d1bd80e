"""The wire types: everything that crosses a process boundary, as JSON.

A task message carries a `StepInput` (ids and small values, never prompts or secrets); a task
returns a `StepResult`; the journal keeps a `StepRecord` per step path; the run hash mirrors
`RunRecord`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

StepStatus = Literal["running", "succeeded", "failed", "skipped"]
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")  # newer senders may add fields


class Usage(_Wire):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cost: float = 0.0  # from the model's `prices`; 0 when it has none

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            calls=self.calls + other.calls,
            cost=self.cost + other.cost,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class StepInput(_Wire):
    """What a step task is sent: which run, which pinned spec, which step, and any fan-out item."""

    run_id: str
    spec_hash: str
    node: str = Field(description="the step's static path in the spec")
    path: str = Field(description="the journal key: `node`, or `node[i]` for a fan-out instance")
    index: int | None = None
    item: Any = None
    quorum: int | None = Field(None, description="a voter under a quorum")


class StepResult(_Wire):
    """A step's outcome. On the wire (`wire()`) it is slim — path, status, error — so messages
    never carry model text; the output itself stays in the journal, under the path."""

    path: str
    status: StepStatus
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    usage: Usage = Field(default_factory=Usage)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", include={"path", "status", "error", "error_type"},
                               exclude_none=True)


class StepRecord(StepResult):
    """A step as the journal keeps it, for `legato show` and for memoization."""

    kind: str = ""
    queue: str | None = None
    worker: str | None = None
    task_id: str | None = None
    attempt: int = 1
    started_at: float | None = None
    ended_at: float | None = None
    detail: dict[str, Any] = Field(default_factory=dict)

    def result(self) -> StepResult:
        return StepResult.model_validate(self.model_dump(include=set(StepResult.model_fields)))


class RunRecord(_Wire):
    id: str
    pipeline: str
    spec_hash: str
    status: RunStatus
    input: Any = None
    output: Any = None
    error: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    usage: Usage = Field(default_factory=Usage)
    idempotency_key: str | None = None
    resumes: int = 0

    @property
    def done(self) -> bool:
        return self.status in TERMINAL
