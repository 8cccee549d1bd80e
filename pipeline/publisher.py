"""Writing run events (events.py) cheaply: a process's `Publisher`, and a step's `StepStream`.

The hot path never waits on Redis for an event: `Publisher.add` appends to a buffer (a call's
consecutive deltas merge into one entry), and a thread writes, all runs in one pipeline, what
has waited `flush_seconds` (and, in the same write, what has waited half that; a step that ends
sooner costs no write of its own). A step's
remaining events ride its journal end (`Publisher.ending`), so they are in Redis before the
chain goes on (and before `run_finished`); a segment's step that hands its end off takes its
own events along as a part of that end's round trip (`Publisher.handing_off`, `EVENTS`).
Writes of one run are ordered: the thread and a step's end both hold the run's lock stripe while
they take its events and write them. A failed write loses events, never a step: they are a view.

`StepStream` is what one step attempt publishes: `call(model)` for each model call (an HTTP try,
a fallback, a repair) — its deltas, and whether it failed — and `answer()` around one logical
answer, which commits the last call that answered and aborts the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from legato.keys import Keys
from legato.lua import Part

log = logging.getLogger(__name__)

Fields = dict[str, str]
_STRIPES = 64

# A `Part` (lua.Trips' "events") that appends entries to a run's event stream. KEYS: the stream.
# ARGV: its MAXLEN ~, then each entry as its number of field/value strings, then those.
EVENTS = """
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
"""


class Publisher:
    def __init__(self, client: Any, keys: Keys, *, maxlen: int = 10000,
                 flush_seconds: float = 0.05) -> None:
        self.redis = client
        self.keys = keys
        self.maxlen = maxlen
        self.flush_seconds = flush_seconds
        self._lock = threading.Lock()  # guards _pending
        self._pending: dict[str, list[Fields]] = {}
        self._since: dict[str, float] = {}  # when each run's oldest pending event came
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, run_id: str, fields: Fields) -> None:
        """Buffer one event (a delta right after a delta of the same call is merged into it)."""
        with self._lock:
            events = self._pending.get(run_id)
            if events is None:
                events = self._pending[run_id] = []
                self._since[run_id] = time.monotonic()
                self._wake.set()
            last = events[-1] if events else None
            if (last is not None and fields["type"] == "delta" and last["type"] == "delta"
                    and last["path"] == fields["path"] and last["call"] == fields["call"]
                    and last["attempt"] == fields["attempt"]):
                last["text"] += fields["text"]
            else:
                events.append(fields)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="legato-publisher",
                                                daemon=True)
                self._thread.start()

    def _stripe(self, run_id: str) -> threading.Lock:
        return self._stripes[hash(run_id) % _STRIPES]

    def _xadd(self, pipe: Any, run_id: str, events: list[Fields]) -> None:
        key = self.keys.events(run_id)
        for fields in events:
            pipe.xadd(key, fields, maxlen=self.maxlen, approximate=True)

    @contextmanager
    def ending(self, run_id: str, tail: list[Fields]) -> Iterator[Callable[[Any], None]]:
        """The run's buffered events and `tail`, to be written into the caller's pipeline (the
        journal end's) inside this block: the run's lock is held until the block is left."""
        with self._stripe(run_id):
            with self._lock:
                events = self._pending.pop(run_id, []) + tail
                self._since.pop(run_id, None)
            yield lambda pipe: self._xadd(pipe, run_id, events)

    def handing_off(self, run_id: str, path: str, tail: list[Fields]) -> Part:
        """A step's own buffered events (those of `path`) and `tail`, as a part for a later
        round trip of its run (a segment's hand-off: the next step's begin, or the run's
        finish). Taken under the run's lock, so what the thread took of the step before is
        written already; the step adds no more, so its events stay in order."""
        with self._stripe(run_id), self._lock:
            pending = self._pending.get(run_id, [])
            mine = [e for e in pending if e.get("path") == path]
            rest = [e for e in pending if e.get("path") != path]
            if rest:
                self._pending[run_id] = rest
            elif run_id in self._pending:
                del self._pending[run_id]
                self._since.pop(run_id, None)
        args: list[Any] = [self.maxlen]
        for fields in mine + tail:
            args.append(2 * len(fields))
            for name, value in fields.items():
                args += (name, value)
        return ("events", [self.keys.events(run_id)], args)

    def flush(self, older_than: float | None = None) -> None:
        """Write what is buffered now: everything, or (the thread) the runs whose oldest event
        waited at least `older_than` seconds — a step quicker than that writes its events
        with its journal end alone, in a round trip it makes anyway."""
        with self._lock:
            if older_than is None:
                runs = list(self._pending)
            else:
                due = time.monotonic() - older_than
                runs = [r for r, since in self._since.items() if since <= due]
        if not runs:
            return
        stripes = sorted({hash(r) % _STRIPES for r in runs})  # one order: no deadlock
        for i in stripes:
            self._stripes[i].acquire()
        try:
            with self._lock:
                batch = {r: self._pending.pop(r) for r in runs if r in self._pending}
                for r in batch:
                    self._since.pop(r, None)
            pipe = self.redis.pipeline(transaction=False)
            for run_id, events in batch.items():
                self._xadd(pipe, run_id, events)
            pipe.execute()
        except Exception as exc:  # a view, not the work: never fail a step for it
            log.warning("run events not written: %s", exc)
        finally:
            for i in stripes:
                self._stripes[i].release()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            if self._closed:
                return
            with self._lock:
                oldest = min(self._since.values(), default=None)
                if oldest is None:  # all taken by journal ends meanwhile
                    self._wake.clear()
                    continue
            wait = oldest + self.flush_seconds - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # let a batch pile up (or a step end and take it)
            # What waited half as long goes too: one write (and wakeup) for the runs that
            # came meanwhile, at most two a period, not one per run's first event.
            self.flush(older_than=self.flush_seconds / 2)

    def close(self) -> None:
        """Write what is buffered and stop the thread."""
        self._closed = True
        self._wake.set()
        self.flush()


class CallStream:
    """One model call's events: its deltas (from any thread, the transport's loop's too)."""

    def __init__(self, step: StepStream, call: int) -> None:
        self.step = step
        self.call = call
        self._base = {"path": step.path, "attempt": str(step.attempt), "call": str(call)}

    def delta(self, text: str) -> None:
        if text:
            self.step.publisher.add(self.step.run_id, {"type": "delta", **self._base,
                                                       "text": text})

    def answered(self) -> None:
        """The call gave an answer: kept if it is the answer (`StepStream.answer`)."""
        self.step._answered.append(self.call)

    def abort(self, reason: str) -> None:
        self.step.publisher.add(self.step.run_id, {"type": "attempt_aborted", **self._base,
                                                   "reason": reason[:500]})


class StepStream:
    """What one attempt of one step (journal path) publishes."""

    def __init__(self, publisher: Publisher, run_id: str, path: str, attempt: int) -> None:
        self.publisher = publisher
        self.run_id = run_id
        self.path = path
        self.attempt = attempt
        self.calls = 0
        self._answered: list[int] = []  # calls that answered and are neither kept nor dropped

    def _fields(self, kind: str, **more: str) -> Fields:
        return {"type": kind, "path": self.path, "attempt": str(self.attempt), **more}

    def started(self) -> None:
        self.publisher.add(self.run_id, self._fields("step_started"))

    def call(self, model: str) -> CallStream:
        """A model call begins; an earlier answer not kept is dropped (a repair asks again)."""
        self._drop("replaced by a later call")
        self.calls += 1
        self.publisher.add(self.run_id, self._fields("attempt_started", call=str(self.calls),
                                                     model=model))
        return CallStream(self, self.calls)

    def _drop(self, reason: str) -> None:
        for n in self._answered:
            self.publisher.add(self.run_id, self._fields("attempt_aborted", call=str(n),
                                                         reason=reason[:500]))
        self._answered.clear()

    @contextmanager
    def answer(self) -> Iterator[None]:
        """Around one logical answer (a model call with its retries, fallbacks and repairs):
        the last call that answered is committed, the others aborted; on an error, all are."""
        try:
            yield
        except BaseException as exc:
            self._drop(str(exc) or type(exc).__name__)
            raise
        if self._answered:
            kept = self._answered.pop()
            self._drop("replaced by a later call")
            self.publisher.add(self.run_id, self._fields("attempt_committed", call=str(kept)))

    def finished(self, status: str, error: str | None) -> Fields:
        """The `step_finished` event (for `Publisher.ending`)."""
        fields = self._fields("step_finished", status=status)
        if error:
            fields["error"] = error[:500]
        return fields

    def ending_part(self, status: str, error: str | None) -> Part:
        """This attempt's buffered events and its `step_finished`, as a part of its handed-off
        end's round trip (`Publisher.handing_off`)."""
        return self.publisher.handing_off(self.run_id, self.path, [self.finished(status, error)])


@contextmanager
def answering(stream: StepStream | None) -> Iterator[None]:
    """`stream.answer()`, or nothing without a stream."""
    if stream is None:
        yield
        return
    with stream.answer():
        yield
