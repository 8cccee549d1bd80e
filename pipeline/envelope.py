"""The wire types: everything that crosses a process boundary, as JSON.

A task message carries a `StepInput` (ids and small values, never prompts or secrets); a task
returns a `StepResult`; the journal keeps a `StepRecord` per step path; the run hash mirrors
`RunRecord`. A step is named by a `StepRef` (run id and path, as fields). What a step record's
`detail` says about its model calls is typed too: `ModelAttempt` (one model tried, with its
`HttpAttempt`s), `Repair` (an answer rejected), `ToolCall` (what a model asked to run), and the
`Message`s sent. What a run tells when it finishes is `OnDone` (a task and/or a webhook), and each
try at telling it a `Delivery`.

The run states are listed here once: `TERMINAL` (final: a run there never changes again, but for
an explicit resume) and `UNFINISHED`. Everything else — the store's Lua scripts included — is
made from these.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeAlias, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.functional_serializers import SerializerFunctionWrapHandler

StepStatus = Literal["running", "waiting", "succeeded", "failed", "skipped"]
TerminalStatus = Literal["succeeded", "failed", "cancelled"]
# `waiting`: a step of the run is parked (pipeline/waits.py), holding no task and no worker slot.
RunStatus = Literal["queued", "running", "waiting", TerminalStatus]

STEP_STATUSES: frozenset[str] = frozenset(get_args(StepStatus))
RUN_STATUSES: frozenset[str] = frozenset(get_args(RunStatus))
TERMINAL: frozenset[str] = frozenset(get_args(TerminalStatus))
UNFINISHED: frozenset[str] = RUN_STATUSES - TERMINAL  # a step of the run may begin
RESUMABLE: frozenset[str] = TERMINAL - {"succeeded"}  # `legato resume` reopens these


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


def step_of(kwargs: dict[str, Any] | None) -> tuple[str, str] | None:
    """(run id, step path) from a Legato task's kwargs (a `StepInput` as sent), if it is one."""
    if not kwargs:
        return None
    step = kwargs.get("step")
    if isinstance(step, dict) and "run_id" in step:
        return str(step["run_id"]), str(step.get("path") or step.get("node") or "")
    steps = kwargs.get("steps")  # a segment or a batch: its first..last step
    if isinstance(steps, list) and steps and isinstance(steps[0], dict):
        first, last = steps[0].get("path", ""), steps[-1].get("path", "")
        return str(steps[0].get("run_id")), first if first == last else f"{first}..{last}"
    if "run_id" in kwargs:  # legato.finalize
        return str(kwargs["run_id"]), "(finalize)"
    return None


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

    @property
    def model_calls(self) -> list[ModelAttempt]:
        """`detail.model_calls`, checked: each model tried, with its attempts."""
        return [ModelAttempt.model_validate(c) for c in self.detail.get("model_calls") or ()]

    @property
    def repairs(self) -> list[Repair]:
        """`detail.repairs`, checked: each answer rejected."""
        return [Repair.model_validate(r) for r in self.detail.get("repairs") or ()]


TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,199}")
QUEUE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}")
MAX_URL_CHARS = 2048


class OnDone(BaseModel):
    """What to tell when a run finishes, however it finishes: a Celery `task` sent the run's
    outcome (one argument, a JSON object) on `queue` (else Celery's default queue, `celery`),
    and/or a webhook `url` POSTed the outcome as JSON, signed. Which hosts a URL may name is the
    worker's setting (LEGATO_WEBHOOK_HOSTS), checked at submit and again at delivery
    (pipeline/callbacks.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str | None = None
    queue: str | None = None
    url: str | None = None

    @field_validator("task")
    @classmethod
    def _task(cls, value: str | None) -> str | None:
        if value is not None and not TASK_NAME.fullmatch(value):
            raise ValueError("a task name is letters, digits and _ . : - (at most 200), "
                             "starting with a letter or _")
        if value is not None and value.startswith("legato."):
            raise ValueError(f"{value!r} is one of Legato's own tasks, not a callback")
        return value

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str | None) -> str | None:
        if value is not None and not QUEUE_NAME.fullmatch(value):
            raise ValueError("a queue name is letters, digits and _ . : - (at most 200)")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > MAX_URL_CHARS or not value.isprintable()
                                  or " " in value):
            raise ValueError(f"not a URL (printable, no spaces, at most {MAX_URL_CHARS} "
                             f"characters)")
        return value

    @model_validator(mode="after")
    def _something(self) -> OnDone:
        if self.task is None and self.url is None:
            raise ValueError("give a task, a url, or both")
        if self.queue is not None and self.task is None:
            raise ValueError("a queue goes with a task")
        return self

    @property
    def targets(self) -> list[DeliveryTarget]:
        named: list[tuple[DeliveryTarget, str | None]] = [("task", self.task),
                                                          ("webhook", self.url)]
        return [target for target, value in named if value is not None]


DeliveryTarget = Literal["task", "webhook"]


class Delivery(BaseModel):
    """One try at telling a finished run's `target`: when, whether it was taken (`ok`), the
    webhook's HTTP status or the error, and whether it was the last try (`final`: taken,
    refused for good, or out of attempts). `delivery_id` is the same on every try."""

    model_config = ConfigDict(extra="ignore")

    target: DeliveryTarget
    delivery_id: str
    at: float
    ok: bool
    status: int | None = None
    error: str | None = None
    final: bool = False


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
    waiting_for: str | None = None  # a queue no live worker serves, a step of the run sent there
    waiting_since: float | None = None
    awaiting: str | None = None  # while `waiting`: what a parked step waits for (waits.py)
    awaiting_since: float | None = None
    parent_run: str | None = None  # a child run: the run whose `pipeline` step started it...
    parent_step: str | None = None  # ...and that step's path
    depth: int = 0  # how deep under the top run a child run is (LEGATO_MAX_PIPELINE_DEPTH)
    on_done: OnDone | None = None  # whom to tell when it finishes
    deliveries: list[Delivery] = Field(default_factory=list)  # the tries at telling them
    schedule: str | None = None  # the schedule (schedules.yaml) that made this run
    tenant: str = "default"  # whose share of the cluster it runs in (legato.tenants)
    priority: int = 0  # higher first, among its tenant's runs waiting for admission
    held: str | None = None  # why it waits for admission (legato.admission), while it does
    admitted_at: float | None = None  # when admission released it (with a tenants file)
    tags: dict[str, str] = Field(default_factory=dict)  # labels given at submit (tags.py)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def waiting(self) -> str | None:
        """"waiting for a worker on queue X since T", while a step of the run sits in a queue
        that no live worker consumes (the sweeper fails the run after LEGATO_UNSERVED_SECONDS);
        "waiting for a signal to step S since T" while a step of it is parked."""
        if self.done:
            return None
        if self.status == "waiting" and self.awaiting:
            since = time.strftime("%H:%M:%S",
                                  time.localtime(self.awaiting_since or self.created_at))
            return f"waiting for {self.awaiting} since {since}"
        if not self.waiting_for:
            return None
        since = time.strftime("%H:%M:%S", time.localtime(self.waiting_since or self.created_at))
        return f"waiting for a worker on queue {self.waiting_for} since {since}"


class StepRef(BaseModel):
    """Which step: a run id and a journal path, as fields (never a "run/path" string parsed
    back). `tag` is that string, for log lines and the `X-Legato-Step` header."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    path: str

    @property
    def tag(self) -> str:
        return f"{self.run_id}/{self.path}"

    @property
    def parent(self) -> str:
        """The path of the step this one is part of (`brief/turn[2]` -> `brief`)."""
        return self.path.rsplit("/", 1)[0]

    def __str__(self) -> str:
        return self.tag


class _Record(BaseModel):
    """A typed entry of a step record's `detail`, journaled as the plain JSON object it always
    was. Unset optional fields (None) are left out of that JSON when `_drop_none` says so.

    It also reads like that JSON object — `entry["model"]`, `entry.get("wait")`, `"wait" in
    entry`, `{**entry}`, `entry == {...}` — for the code and tests that still handle these as
    dicts (pipeline/kinds.py, pipeline/loops.py): a bridge while they move to attributes.
    """

    model_config = ConfigDict(extra="forbid")
    _drop_none: ClassVar[bool] = True

    @model_serializer(mode="wrap")
    def _as_json(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if self._drop_none and isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    def keys(self) -> list[str]:
        return [k for k in type(self).model_fields
                if not (self._drop_none and getattr(self, k) is None)]

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields or (self._drop_none and
                                                   getattr(self, key) is None):
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.keys()

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return bool(self.model_dump() == dict(other))
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]


class HttpAttempt(_Record):
    """One HTTP request to a model: its status or error, how long it took, what the server asked
    us to wait (`retry_after`) and what was waited after it (`wait`)."""

    status: int | None = None
    error: str | None = None
    type: str | None = None  # the error's type: TransientError, PermanentError, ...
    seconds: float
    retry_after: float | None = None
    wait: float | None = None


ModelOutcome = Literal["ok", "failed", "circuit open", "miss"]


class ModelAttempt(_Record):
    """One model tried for a call (the alias or a fallback), as `detail.model_calls` lists it:
    its HTTP attempts, or the cache entry that answered (`cached`), and the outcome."""

    model: str
    cached: str | None = None  # the cache key's head, when the cache answered (or missed)
    attempts: list[HttpAttempt] | None = None  # None: no call was made (a cache hit or miss)
    rate_limited: float | None = None  # seconds waited for the alias's rate limit
    outcome: ModelOutcome | None = None  # None only while the call is in progress
    # A cache hit: what the recorded call had used and how long it had taken (what was saved).
    saved_usage: Usage | None = None
    saved_seconds: float | None = None


class Repair(_Record):
    """An answer rejected (not JSON, or not the schema), as `detail.repairs` lists it."""

    attempt: int
    error: str


class ToolCall(_Record):
    """A tool a model asked to run: the provider's call id (if it gave one), name, arguments."""

    model_config = ConfigDict(frozen=True)
    _drop_none: ClassVar[bool] = False  # `id` is kept, null or not

    id: str | None = None
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: str  # JSON text, as the chat wire has it


class MessageToolCall(BaseModel):
    """A tool call as an assistant message carries it on the chat wire."""

    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

    def model_post_init(self, context: Any, /) -> None:
        self.model_fields_set.add("type")  # on the wire always, given or not


class Message(BaseModel):
    """A chat message. `wire()` is exactly the keys it was made with (so the cache key of a call
    does not change with this type): `{"role", "content"}`, an assistant's `tool_calls`, a tool
    result's `tool_call_id`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Any] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


Messages: TypeAlias = Sequence[Message | Mapping[str, Any]]


def as_messages(messages: Messages) -> list[Message]:
    """Messages as `Message`s, checked: each may be one already or its plain JSON object."""
    return [m if isinstance(m, Message) else Message.model_validate(m) for m in messages]
