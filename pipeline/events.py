"""The run event stream: what a run's steps publish while they work, typed, and read back.

One Redis Stream per run, `<p>:run:{<id>}:events` (`Keys.events`), bounded with `XADD MAXLEN ~`
(LEGATO_STREAM_MAXLEN) and expiring with the run (it is one of `Keys.of_run`). Every entry is a
flat map of strings; `type` says which event it is:

    step_started       path, attempt                 a step (or round, turn, member) began
    attempt_started    path, attempt, call, model    a model call began streaming
    delta              path, attempt, call, text     the next piece of that call's answer
    attempt_aborted    path, attempt, call, reason   that call's answer was discarded (an HTTP
                                                     retry, a fallback, a repair, a failed step)
    attempt_committed  path, attempt, call           that call's answer is the one kept
    step_finished      path, attempt, status, error  the step's journal record was written
    run_finished       status, error                 the run reached a terminal state

`attempt` is the step's attempt in the journal (1, then +1 for each task retry or redelivery),
`call` numbers the model calls within it. A watcher shows, per path, the newest
(attempt, call): the text of a committed call equals the step's journaled answer byte for byte
(for a schema step, the JSON text the output was parsed from). An `attempt_started` for a
(path, attempt, call) already seen (a redelivery after a worker died mid-call) starts it over.

`read` follows a run's stream from an entry id (resumable: pass the last id you saw), and ends
after `run_finished` — or, for a run that published nothing at the end, once its record says it
is over and the stream is drained.

A watcher marks the run watched while it follows (`watching`, renewed every RENEW_SECONDS, gone
WATCH_SECONDS after the last watcher left). With LEGATO_STREAM=watched (the default) only a step
that begins while the mark is there streams and publishes; the others make plain model calls
and publish nothing, so work nobody watches costs what it costs with streaming off.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from legato.keys import Keys


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    id: str = ""  # the stream entry id: pass it back as `last_id` to resume after it


class _AttemptEvent(_Event):
    path: str
    attempt: int
    call: int


class StepStarted(_Event):
    type: Literal["step_started"] = "step_started"
    path: str
    attempt: int


class AttemptStarted(_AttemptEvent):
    type: Literal["attempt_started"] = "attempt_started"
    model: str = ""


class Delta(_AttemptEvent):
    type: Literal["delta"] = "delta"
    text: str


class AttemptAborted(_AttemptEvent):
    type: Literal["attempt_aborted"] = "attempt_aborted"
    reason: str = ""


class AttemptCommitted(_AttemptEvent):
    type: Literal["attempt_committed"] = "attempt_committed"


class StepFinished(_Event):
    type: Literal["step_finished"] = "step_finished"
    path: str
    attempt: int
    status: str
    error: str | None = None


class RunFinished(_Event):
    type: Literal["run_finished"] = "run_finished"
    status: str
    error: str | None = None


Event = Annotated[StepStarted | AttemptStarted | Delta | AttemptAborted | AttemptCommitted
                  | StepFinished | RunFinished, Field(discriminator="type")]
_EVENT: TypeAdapter[Event] = TypeAdapter(Event)

# The order of an event's fields on the wire (readers do not depend on it).
FIELDS = ("type", "path", "attempt", "call", "model", "text", "reason", "status", "error")


_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")


def is_entry_id(text: str) -> bool:
    """Whether `text` is a stream entry id (`<ms>-<seq>`), the form `last_id` takes."""
    return bool(_ENTRY_ID.fullmatch(text))


def parse(entry_id: str, fields: dict[str, str]) -> Event:
    """One stream entry as its typed event; ValueError if it is none."""
    return _EVENT.validate_python({**fields, "id": entry_id})


WATCH_SECONDS = 30  # a watcher's mark lasts this long
RENEW_SECONDS = 10  # and is set again this often while it follows


def watching(client: Any, key: str) -> Any:
    """Mark a run watched for WATCH_SECONDS: `key` is its `Keys.watched` (awaitable with an
    asyncio client)."""
    return client.set(key, "1", ex=WATCH_SECONDS)


class Renewal:
    """When a follower is to set its run's mark (again): at once, then every RENEW_SECONDS."""

    def __init__(self) -> None:
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + RENEW_SECONDS
        return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read(client: Any, keys: Keys, run_id: str, *, last_id: str | None = None,
         finished: Callable[[], str | None], block_ms: int = 1000,
         follow: bool = True) -> Iterator[Event]:
    """The run's events after `last_id` (from the start if None), as they come.

    `finished()` returns the run's terminal status or None; it is asked when a read times out,
    so a run that ends without a `run_finished` entry (nothing streamed) still ends the walk.
    `follow=False` yields what is there now and stops."""
    key = keys.events(run_id)
    cursor = last_id or "0-0"
    renewal = Renewal()
    while True:
        if follow and renewal.due():
            watching(client, keys.watched(run_id))
        reply = client.xread({key: cursor}, count=500, block=block_ms if follow else None)
        entries = reply[0][1] if reply else []
        for raw_id, raw in entries:
            cursor = _text(raw_id)
            event = parse(cursor, {_text(k): _text(v) for k, v in raw.items()})
            yield event
            if isinstance(event, RunFinished):
                return
        if entries:
            continue
        if not follow:
            return
        status = finished()
        if status is not None:  # ended without (or before) a run_finished entry: drain, stop
            rest = client.xrange(key, min=f"({cursor}", max="+")
            for raw_id, raw in rest:
                event = parse(_text(raw_id), {_text(k): _text(v) for k, v in raw.items()})
                yield event
                if isinstance(event, RunFinished):
                    return
            yield RunFinished(status=status)
            return
