"""The journaled step: memo check, running record, work, result record — around every step task.

Failure is a value: a step that fails returns `StepResult(status="failed")` instead of raising, so
a chord always completes and its fan-in applies the step's policy; the steps after a failure in a
chain pass the failed result on untouched, and `legato.finalize` marks the run failed.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Ignore

from pipeline import graph
from pipeline.envelope import StepInput, StepRecord, StepResult
from pipeline.errors import PermanentError, StepError
from pipeline.graph import Node
from pipeline.journal import Begin
from pipeline.kinds import Outcome, StepContext, check_gate
from pipeline.settings import Settings, get_settings
from pipeline.spec import Pipeline
from workers import lifeline, resources

log = logging.getLogger("legato.step")

Work = Callable[[StepContext, Node, Pipeline], Outcome]


def upstream_failure(prev: Any) -> dict[str, Any] | None:
    """A failed result from an earlier step in the chain, to be passed on as it is."""
    if isinstance(prev, dict) and prev.get("status") == "failed" and "path" in prev:
        return prev
    return None


def journaled(task: Task, envelope: dict[str, Any], kind: str, work: Work, *,
              final: bool) -> StepResult:
    """Run `work` once per (run, path). `final`: its output is the node's (gate + publish).

    A delivery of a step that another delivery is working on (a live lease) is dropped with
    `Ignore`: no result, no chain continuation, so it is never started twice.
    """
    step = StepInput.model_validate(envelope)
    settings = get_settings()
    store = resources.store()
    spec = store.get_spec(step.spec_hash)
    node = graph.node(spec, step.node)
    request = task.request
    record = StepRecord(
        path=step.path, status="running", kind=kind,
        queue=(request.delivery_info or {}).get("routing_key"), worker=request.hostname,
        task_id=request.id, started_at=time.time(),
    )
    token = uuid.uuid4().hex
    begin = store.journal.begin(step.run_id, record, node.reads, token=token,
                                signature=lifeline.signature_json(task), now=time.time(),
                                lease_seconds=settings.lease_seconds)
    if begin.state == "busy":
        raise Ignore()
    if begin.state == "done" and begin.prior is not None:
        return begin.prior.result()
    if begin.state != "go":
        reason = f"the run is {begin.run_status}" if begin.run_status else "the run is gone"
        return StepResult(path=step.path, status="failed", error=reason, error_type="Cancelled")
    record.attempt = begin.attempt
    keeper = lifeline.keeper(store, settings)
    keeper.hold(step.run_id, step.path, token)
    try:
        _work(record, work, node, spec, step, begin, final)
    finally:
        keeper.release(step.run_id, step.path)
    retry_in = _retry_in(task, record, settings)
    if retry_in is not None:  # keep the step open, free the lease, come back later
        record.status, record.detail = "running", {**record.detail, "retrying_in": retry_in}
    store.journal.end(step.run_id, record, node.publishes if final else (), token=token,
                      now=record.ended_at or time.time())
    if retry_in is not None:
        raise task.retry(countdown=retry_in, max_retries=settings.step_retries)
    return record.result()


def _check_size(output: Any, limit: int) -> None:
    """Outputs live in Redis and feed later prompts: refuse one over the limit, readably."""
    size = len(json.dumps(output, ensure_ascii=False, default=str).encode())
    if size > limit:
        raise PermanentError(f"output of {size} bytes is over the limit of {limit} "
                             f"(LEGATO_MAX_OUTPUT_BYTES)")


def _retry_in(task: Task, record: StepRecord, settings: Settings) -> float | None:
    """Seconds until a transiently failed step is tried again as a whole task, or None."""
    retries = task.request.retries or 0
    if record.error_type != "TransientError" or retries >= settings.step_retries:
        return None
    return settings.step_retry_seconds * 3**retries * random.uniform(0.8, 1.2)


def _work(record: StepRecord, work: Work, node: Node, spec: Pipeline, step: StepInput,
          begin: Begin, final: bool) -> None:
    ctx = StepContext(input=begin.input, outputs=begin.outputs, models=spec.models,
                      http=resources.http(), step_tag=f"{step.run_id}/{step.path}",
                      item=step.item, index=step.index, gateway=resources.gateway(),
                      run=resources.run_scope(step.run_id, spec))
    try:
        outcome = work(ctx, node, spec)
        _check_size(outcome.output, get_settings().max_output_bytes)
        if final and node.step.gate is not None:
            check_gate(node.step.gate, outcome.output, ctx)
        record.status, record.output = "succeeded", outcome.output
        record.usage, record.detail = outcome.usage, outcome.detail
    except StepError as exc:
        record.status, record.error, record.error_type = "failed", str(exc), type(exc).__name__
        record.detail = getattr(exc, "detail", None) or {}  # e.g. the model calls tried
    except Exception as exc:  # a bug or an unexpected library error: keep it readable on the run
        log.exception("step %s of run %s raised", step.path, step.run_id)
        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        record.error_type = "InternalError"
    record.ended_at = time.time()
