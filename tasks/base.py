"""The step-task base: what every step task does the same way, written once.

`@step_task(name)` registers a task on `StepTask`. Its body only says what the step does — it
calls `journaled` with the kind's work and returns a result, or raises `task.replace(signature)`
to become the next part of the canvas. The base owns the rest:

- `then` (on a stage's last task): the run's next stage is compiled into the task's
  continuation before the body runs (tasks/stages.py);
- an upstream failure (a failed result from an earlier step in the chain) is passed on as it is;
- `journaled`: memo check, running record and lease, the work, the result record (one round trip
  each way), retry of the whole task later when the error *is a* TransientError;
- **failure is a value**: any exception out of the body — a bug, a canvas that cannot be built —
  becomes a failed result that names the step and the cause, journaled, and passed on, so a chord
  always completes, its fan-in applies the step's policy, and the run is closed failed rather
  than left running. Only Celery's own control flow (replace, retry, ignore) and a Redis that
  stays unreachable pass through: durability (leases, the sweeper) handles those;
- `on_loop` (a segment's): the body runs on the model transport's event loop (legato.bridge).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import contextmanager
from typing import Any

from celery import Task
from celery import _state as celery_state
from celery.exceptions import Ignore, Reject, Retry
from redis.exceptions import ConnectionError as RedisDown
from redis.exceptions import TimeoutError as RedisTimeout

from legato import bridge, graph, templates
from legato.concurrency import MAX_KEY_CHARS
from legato.context import Outcome, StepContext, check_gate
from legato.envelope import StepInput, StepRecord, StepRef, StepResult
from legato.errors import PermanentError, StepError, TransientError
from legato.graph import Node
from legato.journal import Begin
from legato.keys import lease_member
from legato.lua import Part
from legato.models.credentials import redact
from legato.publisher import Fields, StepStream
from legato.settings import Settings, get_settings
from legato.spec import Pipeline
from legato.tasks.finish import Handoff, close_run
from legato.tasks.stages import follow, with_then
from legato.workers import lifeline, observability, resources
from legato.workers.app import app

log = logging.getLogger("legato.step")

Work = Callable[[StepContext, Node, Pipeline], Outcome]
Body = Callable[..., Any]

# Not failures of the step: Celery's control flow out of a task body, and Redis unreachable even
# after the clients' retries (the step's lease runs out and the sweeper sends it again).
_PASS_THROUGH = (Ignore, Reject, Retry, RedisDown, RedisTimeout)


def upstream_failure(prev: Any) -> dict[str, Any] | None:
    """A failed result from an earlier step in the chain, to be passed on as it is."""
    if isinstance(prev, dict) and prev.get("status") == "failed" and "path" in prev:
        return prev
    return None


class StepTask(Task):
    """The base of every step task (see the module's docstring)."""

    on_loop = False  # `step_task(on_loop=True)`: run on the transport's loop (workers/pool.py)

    def failed(self, exc: BaseException, kwargs: dict[str, Any], *, closes: bool = False) -> Any:
        """The failed result for an exception out of the body, journaled on the step.
        `closes`: nothing follows it (its run's next stage could not be made): close the run."""
        envelopes = kwargs.get("steps") or [kwargs.get("step")]
        first = envelopes[0] if isinstance(envelopes, list) and envelopes else None
        first = first if isinstance(first, dict) else {}  # a forged envelope names no step
        run_id, path = first.get("run_id"), first.get("path") or first.get("node") or "?"
        log.exception("step %s of run %s: the task raised", path, run_id)
        error = _redacted(f"{type(exc).__name__}: {exc}")
        record = StepRecord(path=path, status="failed", kind=self.name.removeprefix("legato."),
                            error=error, error_type="InternalError", task_id=self.request.id,
                            started_at=time.time(), ended_at=time.time())
        if run_id:
            resources.store().fail_step(run_id, record)
            if kwargs.get("finalize") or closes:
                close_run(run_id, first.get("spec_hash", ""), record.result().wire())
        result = record.result().wire()
        return [result] if self.name == "legato.llm_batch" else result  # a batch returns a list


def step_task(name: str, *, on_loop: bool = False, **options: Any) -> Callable[[Body], StepTask]:
    """Register `body` as the step task `name` on the step-task base, guarded: whatever it
    raises (but `_PASS_THROUGH`) becomes a failed result. `on_loop`: run the body on the model
    transport's event loop (`_on_loop`)."""

    def register(body: Body) -> StepTask:
        run = functools.partial(_on_loop, body) if on_loop else body

        @functools.wraps(body)
        def guarded(self: StepTask, *args: Any, then: Any = None, **kwargs: Any) -> Any:
            try:
                if then is not None:
                    follow(self, kwargs, then)
                return run(self, *args, **_typed(kwargs))
            except _PASS_THROUGH:
                raise
            except Exception as exc:  # failure is a value
                return self.failed(exc, kwargs, closes=then is not None and
                                   not self.request.chain)

        guarded.__signature__ = with_then(inspect.signature(body))  # type: ignore[attr-defined]
        return app.task(name=name, bind=True, base=StepTask, on_loop=on_loop,
                        **options)(guarded)

    return register


def _on_loop(body: Body, task: StepTask, *args: Any, **kwargs: Any) -> Any:
    """`body(task, ...)`, run on the model transport's event loop as a bridged greenlet
    (legato.bridge), this pool thread waiting once for the whole task; in this thread when the
    transport has no loop or LEGATO_STEPS_ON_LOOP is off. A task that Legato's pool started on
    the loop (workers/pool.py) is there already: its body runs as it is."""
    loop = None if bridge.active() else resources.steps_loop()
    if loop is None:
        return body(task, *args, **kwargs)
    request = task.request  # Celery keeps it per greenlet: the body's is pushed in it

    def bridged() -> Any:
        task.request_stack.push(request)
        celery_state._task_stack.push(task)
        try:
            return body(task, *args, **kwargs)
        finally:
            celery_state._task_stack.pop()
            task.request_stack.pop()

    return asyncio.run_coroutine_threadsafe(bridge.run(bridged), loop).result()


def _typed(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The body's kwargs with its step input typed: `step` a StepInput, `steps` a list of them
    (a malformed one raises, and fails the step like any other error)."""
    typed = dict(kwargs)
    if "step" in typed:
        typed["step"] = StepInput.model_validate(typed["step"])
    if "steps" in typed:
        typed["steps"] = [StepInput.model_validate(s) for s in typed["steps"]]
    return typed


def journaled(task: Task, step: StepInput, kind: str, work: Work, *,
              final: bool) -> StepResult:
    """Run `work` once per (run, path). `final`: its output is the node's (gate + publish).

    A delivery of a step that another delivery is working on (a live lease) is dropped with
    `Ignore`: no result, no chain continuation, so it is never started twice.
    """
    return journal_step(task, step, kind, work, final=final)[0]


def journal_step(task: Task, step: StepInput, kind: str, work: Work, *, final: bool,
                 first: list[Part] | None = None, signature: str | None = None,
                 hand_off: bool = False) -> tuple[StepResult, Handoff | None]:
    """`journaled`, for the steps of a segment: `first` (the previous step's end, not yet
    written) rides this step's begin; `signature`: a reference to the task's signature, kept
    once (`Journal.keep_signature`); with `hand_off`, this step's end is not written but
    returned, to ride the next begin or the run's finish — so a segment of n steps costs n + 1
    journal round trips, not 2n. An end that must be written now (the step retries, or has run
    events to flush first) is written now, and None returned."""
    settings = get_settings()
    store = resources.store()
    spec = store.get_spec(step.spec_hash)
    node = graph.node(spec, step.node)
    record = _running(task.request, step, kind)
    token = uuid.uuid4().hex
    begin = store.journal.begin(step.run_id, record, node.reads, token=token,
                                signature=signature or lifeline.signature_json(task),
                                now=time.time(), lease_seconds=settings.lease_seconds,
                                first=first)
    if begin.state == "busy":
        raise Ignore()
    if begin.state != "go":
        return _not_run(step, begin), None
    record.attempt = begin.attempt
    try:
        waiting = _concurrency_slot(step, node, begin)
    except PermanentError as exc:
        waiting, work = None, _refused(exc)
    if waiting is not None:  # back to the broker for a while, its lease let go
        record.detail = {"waiting": waiting}
        store.journal.wait_turn(step.run_id, record, token=token, now=time.time())
        app.signature(lifeline.signature_json(task)).apply_async(
            countdown=random.uniform(*CONCURRENCY_WAIT))
        raise Ignore()
    stream = _stream(step, begin)
    keeper = resources.keeper()
    keeper.hold(step.run_id, step.path, token)
    try:  # a step that parks (legato.waits.Parked) ends here: no end record, its lease moved
        error = _work(record, work, node, spec, step, begin, final, token, stream)
    finally:
        keeper.release(step.run_id, step.path)
    retry_in = _hold_for_retry(task, record, error, settings)
    publishes = node.publishes if final else ()
    now = record.ended_at or time.time()
    if hand_off and retry_in is None:
        parts = [store.journal.end_part(step.run_id, record, publishes, token=token, now=now)]
        if stream is not None:  # its events ride with its end, first
            parts.insert(0, stream.ending_part(record.status, record.error))
        return record.result(), Handoff(parts, record.output, publishes)
    with _ending(step.run_id, [(stream, record, retry_in)]) as before:
        store.journal.end(step.run_id, record, publishes, token=token, now=now, before=before)
    if retry_in is not None:
        raise task.retry(countdown=retry_in, max_retries=settings.step_retries)
    return record.result(), None


def journaled_many(task: Task, steps: list[StepInput], kind: str,
                   work: Work) -> list[StepResult]:
    """`journaled` for the members of a fan-out (never final), run concurrently in one task.

    Beginning is one round trip for all; ends are written together as members finish (at most
    END_BATCH at once, none left waiting over FLUSH_SECONDS), so a redelivered batch redoes only
    the members that had not finished. A transiently failed member retries the whole task later
    (the finished ones are memoized).
    """
    run_id = steps[0].run_id
    settings = get_settings()
    store = resources.store()
    spec = store.get_spec(steps[0].spec_hash)
    nodes = [graph.node(spec, s.node) for s in steps]
    request = task.request  # a thread-local lookup: once, not once per member
    records = [_running(request, s, kind) for s in steps]
    token = uuid.uuid4().hex
    signature = lifeline.signature_json(task)
    begins = store.journal.begin_many(
        run_id, [(r, n.reads) for r, n in zip(records, nodes, strict=True)], token=token,
        signature=signature, task_id=request.id, now=time.time(),
        lease_seconds=settings.lease_seconds)
    if any(b.state == "busy" for b in begins):  # another delivery runs: this one must not
        members = {state: [lease_member(run_id, s.path)
                           for s, b in zip(steps, begins, strict=True) if b.state == state]
                   for state in ("go", "busy")}
        store.journal.unshare_batch(request.id, token=token, signature=signature,
                                    began=members["go"], busy=members["busy"])
        raise Ignore()
    results = [None if b.state == "go" else _not_run(s, b)
               for s, b in zip(steps, begins, strict=True)]
    keeper = resources.keeper()
    running: dict[Future[StepError | None], int] = {}
    streams: dict[int, StepStream | None] = {}
    retrying: dict[int, float | None] = {}
    for i, begin in enumerate(begins):
        if begin.state == "go":
            records[i].attempt = begin.attempt
            streams[i] = _stream(steps[i], begin)
            keeper.hold(run_id, steps[i].path, token)
            future = resources.batch_pool().submit(_work, records[i], work, nodes[i], spec,
                                                   steps[i], begin, False, token,
                                                   streams[i])
            running[future] = i
    retry_in: float | None = None
    pending, first_done = set(running), 0.0
    finished: list[int] = []
    try:
        while pending:
            done, pending = wait(pending, timeout=FLUSH_SECONDS if finished else None,
                                 return_when=FIRST_COMPLETED)
            for future in done:
                i = running[future]
                retrying[i] = _hold_for_retry(task, records[i], future.result(), settings)
                retry_in = retrying[i] or retry_in
                first_done = first_done if finished else time.monotonic()
                finished.append(i)
            if finished and (not pending or len(finished) >= END_BATCH
                             or time.monotonic() - first_done >= FLUSH_SECONDS):
                ends = [(streams[j], records[j], retrying[j]) for j in finished]
                with _ending(run_id, ends) as before:
                    store.journal.end_many(run_id, [(records[j], ()) for j in finished],
                                           token=token, now=time.time(), before=before)
                finished.clear()
    finally:  # on an error too: a lease not renewed runs out, and the sweeper sends us again
        for i in running.values():
            keeper.release(run_id, steps[i].path)
    store.journal.forget_batch(request.id)
    if retry_in is not None:
        raise task.retry(countdown=retry_in, max_retries=settings.step_retries)
    return [r if r is not None else records[i].result() for i, r in enumerate(results)]


# A batch's ends are written at most END_BATCH at once, none left waiting over FLUSH_SECONDS.
END_BATCH = 32
FLUSH_SECONDS = 0.05
# A step over its concurrency key's limit is sent again after this many seconds (at random).
CONCURRENCY_WAIT = (0.3, 1.0)


def _concurrency_slot(step: StepInput, node: Node, begin: Begin) -> str | None:
    """Take a slot of the step's concurrency key (legato.concurrency): None when it has one
    (or has no key), else why it waits. PermanentError if the key cannot be made."""
    spec = node.step.concurrency
    if spec is None:
        return None
    context = {"input": begin.input, "outputs": begin.outputs, "item": step.item,
               "index": step.index}
    try:
        key = templates.render(spec.key, context)
    except Exception as exc:
        raise PermanentError(f"concurrency key failed: {type(exc).__name__}: {exc}") from None
    if not key or len(key) > MAX_KEY_CHARS:
        raise PermanentError(f"concurrency key {key[:40]!r}: 1 to {MAX_KEY_CHARS} characters")
    used = resources.concurrency().acquire(key, lease_member(step.run_id, step.path),
                                           spec.limit, now=time.time())
    if used is None:
        return None
    return f"waiting for concurrency key {key!r}: {used} of {spec.limit} running"


def _refused(exc: StepError) -> Work:
    """Work that fails with `exc` (the step could not start)."""
    def work(ctx: StepContext, node: Node, spec: Pipeline) -> Outcome:
        raise exc

    return work


def _stream(step: StepInput, begin: Begin) -> StepStream | None:
    """What this attempt of the step publishes on its run's event stream (None: streaming off,
    or `watched` and nobody follows the run: its model calls are plain requests); its
    `step_started` is buffered now and written with the first flush."""
    publisher = resources.publisher()
    if publisher is None or (not begin.watched and get_settings().stream == "watched"):
        return None
    stream = StepStream(publisher, step.run_id, step.path, begin.attempt)
    stream.started()
    return stream


@contextmanager
def _ending(run_id: str, ends: list[tuple[StepStream | None, StepRecord, float | None]],
            ) -> Iterator[Callable[[Any], None] | None]:
    """The `before` of a journal end: the ending steps' buffered events and `step_finished`,
    written in the end's round trip (None when streaming is off)."""
    publisher = resources.publisher()
    if publisher is None or not any(stream for stream, _, _ in ends):
        yield None
        return
    tail: list[Fields] = []
    for stream, record, retry_in in ends:
        if stream is not None:
            status = "retrying" if retry_in is not None else record.status
            tail.append(stream.finished(status, record.error))
    with publisher.ending(run_id, tail) as before:
        yield before


def _running(request: Any, step: StepInput, kind: str) -> StepRecord:
    return StepRecord(
        path=step.path, status="running", kind=kind,
        queue=(request.delivery_info or {}).get("routing_key"), worker=request.hostname,
        task_id=request.id, started_at=time.time(),
    )


def _not_run(step: StepInput, begin: Begin) -> StepResult:
    """The result of a step that did not run now: done before, or its run is over or gone."""
    if begin.state == "done" and begin.prior is not None:
        return begin.prior.result()
    reason = f"the run is {begin.run_status}" if begin.run_status else "the run is gone"
    return StepResult(path=step.path, status="failed", error=reason, error_type="Cancelled")


def _hold_for_retry(task: Task, record: StepRecord, error: StepError | None,
                    settings: Settings) -> float | None:
    """If the step will be tried again as a whole task, keep its record open (running, the
    lease let go) and return the seconds until then."""
    retry_in = _retry_in(task, error, settings)
    if retry_in is not None:
        record.status, record.detail = "running", {**record.detail, "retrying_in": retry_in}
    return retry_in


def _redacted(error: str) -> str:
    """A step's error as it may be stored: without the worker's credentials or key-shaped
    strings (a tool's or a library's error may echo them, not only a provider's)."""
    try:
        secrets = resources.gateway().credentials.secrets()
    except Exception:  # a bad models file: still strip what looks like a key
        secrets = []
    return redact(error, secrets)


def _check_output(output: Any, limit: int) -> None:
    """Outputs live in Redis as JSON and feed later prompts: refuse, readably and once, one that
    is not JSON (a set, bytes, an object: a bug in a tool, not worth retrying) or is over the
    limit."""
    try:
        text = json.dumps(output, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"output is not JSON: {exc}") from None
    size = len(text.encode())
    if size > limit:
        raise PermanentError(f"output of {size} bytes is over the limit of {limit} "
                             f"(LEGATO_MAX_OUTPUT_BYTES)")


def _retry_in(task: Task, error: StepError | None, settings: Settings) -> float | None:
    """Seconds until a transiently failed step is tried again as a whole task, or None."""
    retries = task.request.retries or 0
    if not isinstance(error, TransientError) or retries >= settings.step_retries:
        return None
    return settings.step_retry_seconds * 3**retries * random.uniform(0.8, 1.2)


def _work(record: StepRecord, work: Work, node: Node, spec: Pipeline, step: StepInput,
          begin: Begin, final: bool, token: str, stream: StepStream | None = None
          ) -> StepError | None:
    """Do the work into `record`; every exception but Celery's Ignore (a step that parked)
    becomes a failed record. Returns the step error it failed with (retry is decided by its
    type), if any."""
    ctx = StepContext(input=begin.input, outputs=begin.outputs, models=spec.models,
                      http=resources.transport(),
                      step=StepRef(run_id=step.run_id, path=step.path), node=step.node,
                      item=step.item, index=step.index,
                      gateway=resources.gateway(), run=resources.run_scope(step.run_id, spec),
                      tools=resources.tools(), store=resources.store(), stream=stream,
                      lease=token)
    error: StepError | None = None
    try:
        with observability.in_step(step.run_id, step.path):
            outcome = work(ctx, node, spec)
        _check_output(outcome.output, get_settings().max_output_bytes)
        if final and node.step.gate is not None:
            check_gate(node.step.gate, outcome.output, ctx)
        record.status, record.output = "succeeded", outcome.output
        record.usage, record.detail = outcome.usage, outcome.detail
    except Ignore:  # parked (legato.waits): the step is not over
        raise
    except StepError as exc:
        record.status, record.error, record.error_type = "failed", _redacted(str(exc)), \
            type(exc).__name__
        record.detail = getattr(exc, "detail", None) or {}  # e.g. the model calls tried
        error = exc
    except Exception as exc:  # a bug or an unexpected library error: keep it readable on the run
        log.exception("step %s of run %s raised", step.path, step.run_id)
        record.status, record.error = "failed", _redacted(f"{type(exc).__name__}: {exc}")
        record.error_type = "InternalError"
    record.ended_at = time.time()
    return error
