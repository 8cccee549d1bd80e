"""The console's HTTP API under /api: submit, status, result, steps, cancel, resume, search.

Synchronous routes run on the server's thread pool (the producer client is sync); what waits —
a result with `?wait=`, a run's event stream (events.py) — waits on asyncio Redis, holding no
thread. Errors are one line (errors.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from legato.cli import MAX_INPUT_DEPTH, depth
from legato.console.errors import Conflict
from legato.console.feeds import Behind
from legato.console.state import ConsoleState, state
from legato.envelope import RESUMABLE, TERMINAL, RunRecord, StepRecord
from legato.errors import InputError
from legato.events import Event, RunFinished
from legato.loader import available_pipelines
from legato.search import RunPage, RunQuery, find_runs
from legato.tags import parse_tags

router = APIRouter(prefix="/api")
State = Annotated[ConsoleState, Depends(state)]
# Run ids are uuid4 hex; anything else is no run, and never reaches a Redis key.
RunId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,128}$", description="a run's id")]
MAX_RESULT_WAIT = 60.0


class Error(BaseModel):
    error: str = Field(description="one line; it names the field or the run")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Error} for code in (401, 404, 409, 422, 503)}


class SubmitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(max_length=200, description="a pipeline's name (never a path)")
    input: Any = Field(default_factory=dict, description="the job input (its schema applies)")
    idempotency_key: str | None = Field(default=None, max_length=200)
    tags: dict[str, str] = Field(default_factory=dict, description="labels: key -> value")
    tenant: str | None = Field(default=None, max_length=200, description="whose fair share it "
                               "runs in (legato.tenants); `default` unless given")
    priority: int | None = Field(default=None, strict=True, description="-1000..1000, higher "
                                 "first within its tenant; 0 unless given")
    watch: bool = Field(default=False, description="the caller will follow the run's events: "
                        "its steps stream from the first (LEGATO_STREAM=watched)")


class Submitted(BaseModel):
    run_id: str


class RunView(RunRecord):
    waiting_note: str | None = Field(default=None, description="what the run waits for, in "
                                     "words: a worker on queue X, a signal at step Y")


class Result(BaseModel):
    id: str
    status: str
    done: bool
    output: Any = None
    error: str | None = None


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="cancelled", max_length=500)


class Cancelled(BaseModel):
    cancelled: bool = Field(description="false: the run had already finished")
    status: str


class Resumed(BaseModel):
    resumed: bool = True


def view(record: RunRecord) -> RunView:
    return RunView(**record.model_dump(), waiting_note=record.waiting)


@router.post("/runs", status_code=201, response_model=Submitted, responses=ERRORS,
             summary="Submit a job", tags=["runs"])
def submit(body: SubmitBody, st: State) -> Submitted:
    """Validated as `legato.submit` validates: an unknown pipeline, a bad input, bad tags, tenant
    or priority are a 422 naming the field, and nothing is written or enqueued."""
    if depth(body.input) > MAX_INPUT_DEPTH:
        raise InputError(f"input: nested too deeply (the limit is {MAX_INPUT_DEPTH} levels)")
    run_id = st.legato.submit(body.pipeline, body.input, idempotency_key=body.idempotency_key,
                              names_only=True, tags=body.tags, tenant=body.tenant,
                              priority=body.priority, watch=body.watch)
    return Submitted(run_id=run_id)


def moment(text: str | None, name: str) -> float | None:
    """Unix seconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    if text is None or text == "":
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise InputError(f"{name}: {text[:40]!r} is not a time")
        return seconds
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"{name}: {text[:40]!r} is neither Unix seconds nor an ISO 8601 "
                         f"time") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@router.get("/runs", response_model=RunPage, responses=ERRORS, summary="Search runs",
            tags=["runs"])
def search(
    st: State,
    pipeline: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[str | None, Query(max_length=20)] = None,
    tenant: Annotated[str | None, Query(max_length=64)] = None,
    priority: Annotated[int | None, Query(ge=-1000, le=1000)] = None,
    tag: Annotated[list[str], Query(description="key=value; repeat: all of them")] = [],  # noqa: B006
    since: Annotated[str | None, Query(description="Unix seconds or ISO 8601")] = None,
    until: Annotated[str | None, Query(description="Unix seconds or ISO 8601")] = None,
    q: Annotated[str | None, Query(max_length=200, description="text in input/output/error")
                 ] = None,
    schedule: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
) -> RunPage:
    """Newest first. Reads at most 10,000 run records a query: `complete` says whether every run
    in the time range was looked at; pass `next_until` as `until` for the next page."""
    query = RunQuery.checked(pipeline=pipeline or None, status=status or None,
                             tenant=tenant or None, priority=priority,
                             tags=parse_tags(tag, option="tag"), since=moment(since, "since"),
                             until=moment(until, "until"), text=q or None,
                             schedule=schedule or None, limit=limit)
    return find_runs(st.legato.store, query)


@router.get("/runs/{run_id}", response_model=RunView, responses=ERRORS, tags=["runs"],
            summary="A run's record")
def status(run_id: RunId, st: State) -> RunView:
    return view(st.legato.status(run_id))


@router.get("/runs/{run_id}/result", response_model=Result, responses=ERRORS, tags=["runs"],
            summary="A run's outcome, waiting for it if asked")
async def result(run_id: RunId, st: State,
                 wait: Annotated[float, Query(ge=0, le=MAX_RESULT_WAIT)] = 0) -> Result:
    """With `wait` (seconds, at most 60), answers when the run finishes or the time is up,
    whichever is first: `done` says which."""
    record = await wait_for(st, run_id, wait)
    return Result(id=record.id, status=record.status, done=record.done, output=record.output,
                  error=record.error)


async def wait_for(st: ConsoleState, run_id: str, seconds: float) -> RunRecord:
    """The run's record once it is terminal, or after `seconds`: listening for its completion
    event on asyncio Redis (subscribed before reading, so the event is never missed)."""
    record = await asyncio.to_thread(st.legato.status, run_id)
    if record.done or seconds <= 0:
        return record
    deadline = time.monotonic() + seconds
    async with st.aredis.pubsub(ignore_subscribe_messages=True) as pubsub:
        await pubsub.subscribe(st.legato.store.done_channel(run_id))
        while True:
            record = await asyncio.to_thread(st.legato.status, run_id)
            left = deadline - time.monotonic()
            if record.status in TERMINAL or left <= 0:
                return record
            await pubsub.get_message(timeout=min(left, 1.0))


KEEPALIVE_SECONDS = 15.0
EntryId = Annotated[str | None, Query(pattern=r"^\d{1,20}-\d{1,20}$",
                                      description="resume after this event id")]


@router.get("/runs/{run_id}/events", responses=ERRORS, tags=["runs"],
            summary="The run's events, live (Server-Sent Events)",
            response_class=StreamingResponse)
async def run_events(run_id: RunId, st: State, request: Request,
                     last_id: EntryId = None) -> StreamingResponse:
    """`text/event-stream`: each event of the run's stream (legato.events: step_started,
    attempt_started, delta, attempt_aborted, attempt_committed, step_finished, run_finished) as
    an SSE event of that name, its entry id as the SSE id and its fields as JSON data; then an
    `end` event. Resumable: a reconnecting EventSource sends Last-Event-ID (or pass
    `last_id`)."""
    await asyncio.to_thread(st.legato.status, run_id)  # 404 for an unknown run
    after = request.headers.get("last-event-id") or last_id
    if after is not None and not re.fullmatch(r"\d{1,20}-\d{1,20}", after):
        raise InputError(f"Last-Event-ID: {after[:40]!r} is not an event id")
    assert st.feeds is not None
    return StreamingResponse(_sse(st.feeds.follow(run_id, after)),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _sse(followed: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    pending: asyncio.Future[Event] | None = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(anext(followed))
            done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_SECONDS)
            if not done:
                yield b": keepalive\n\n"
                continue
            event, pending = pending.result(), None
            data = json.dumps(event.model_dump(mode="json", exclude={"id"}),
                              ensure_ascii=False, separators=(",", ":"))
            yield f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n".encode()
            if isinstance(event, RunFinished):
                yield b"event: end\ndata: {}\n\n"
                return
    except (StopAsyncIteration, Behind):
        return  # the client reconnects with its Last-Event-ID
    finally:
        if pending is not None:
            pending.cancel()
        await followed.aclose()  # type: ignore[attr-defined]


@router.get("/runs/{run_id}/steps", response_model=list[StepRecord], responses=ERRORS,
            tags=["runs"], summary="A run's journaled steps")
def steps(run_id: RunId, st: State) -> list[StepRecord]:
    st.legato.status(run_id)  # 404 for an unknown run
    return st.legato.steps(run_id)


@router.post("/runs/{run_id}/cancel", response_model=Cancelled, responses=ERRORS,
             tags=["runs"], summary="Cancel a run")
def cancel(run_id: RunId, st: State, body: CancelBody | None = None) -> Cancelled:
    """Steps not yet begun will not run; steps in flight finish their call."""
    changed = st.legato.cancel(run_id, (body or CancelBody()).reason)
    return Cancelled(cancelled=changed, status=st.legato.status(run_id).status)


@router.post("/runs/{run_id}/resume", status_code=202, response_model=Resumed,
             responses=ERRORS, tags=["runs"], summary="Resume a failed or cancelled run")
def resume(run_id: RunId, st: State) -> Resumed:
    """Completed steps are reused, the rest run. 409 for a run that is not failed or
    cancelled."""
    record = st.legato.status(run_id)
    if record.status not in RESUMABLE:
        only = " or ".join(sorted(RESUMABLE, reverse=True))
        raise Conflict(f"run {run_id} is {record.status}: only {only} runs resume")
    try:
        st.legato.resume(run_id)
    except InputError as exc:  # it changed state meanwhile
        raise Conflict(str(exc)) from None
    return Resumed()


class SignalBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: str = Field(max_length=500, description="the wait step's (or agent's) id or path")
    data: Any = Field(default=None, description="the payload; the step's schema applies (an "
                      "agent's approval: {decision: approve|reject|edit, reason, arguments})")
    by: str | None = Field(default=None, max_length=200, description="who sends it")


class Signalled(BaseModel):
    path: str
    state: str = Field(description="resumed, or stored (the run has not reached the step)")


@router.post("/runs/{run_id}/signal", response_model=Signalled, responses=ERRORS,
             tags=["runs"], summary="Signal a waiting step (answer a wait, approve a call)")
def signal(run_id: RunId, body: SignalBody, st: State) -> Signalled:
    """Checked as `legato signal` checks it: a payload off the step's schema, a step that takes
    no signal, a finished run or a second signal is a 422 naming why, and changes nothing."""
    if depth(body.data) > MAX_INPUT_DEPTH:
        raise InputError(f"data: nested too deeply (the limit is {MAX_INPUT_DEPTH} levels)")
    reply = st.legato.signal(run_id, body.step, body.data, by=body.by)
    return Signalled(path=reply.path, state=reply.state)


@router.get("/pipelines", response_model=list[str], tags=["pipelines"],
            summary="The pipelines a job may name")
def pipelines(st: State) -> list[str]:
    return available_pipelines(st.legato.settings.pipelines_dir)
