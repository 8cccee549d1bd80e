"""The journaled step: memo check, running record, work, result record — around every step task.

Failure is a value: a step that fails returns `StepResult(status="failed")` instead of raising, so
a chord always completes and its fan-in applies the step's policy; the steps after a failure in a
chain pass the failed result on untouched, and `legato.finalize` marks the run failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Task

from pipeline import graph
from pipeline.envelope import StepInput, StepRecord, StepResult
from pipeline.errors import StepError
from pipeline.graph import Node
from pipeline.kinds import Outcome, StepContext, check_gate
from pipeline.spec import Pipeline
from workers import resources

log = logging.getLogger("legato.step")

Work = Callable[[StepContext, Node, Pipeline], Outcome]


def upstream_failure(prev: Any) -> dict[str, Any] | None:
    """A failed result from an earlier step in the chain, to be passed on as it is."""
    if isinstance(prev, dict) and prev.get("status") == "failed" and "path" in prev:
        return prev
    return None


def journaled(task: Task, envelope: dict[str, Any], kind: str, work: Work, *,
              final: bool) -> StepResult:
    """Run `work` once per (run, path). `final`: its output is the node's (gate + publish)."""
    step = StepInput.model_validate(envelope)
    store = resources.store()
    spec = store.get_spec(step.spec_hash)
    node = graph.node(spec, step.node)
    request = task.request
    record = StepRecord(
        path=step.path, status="running", kind=kind,
        queue=(request.delivery_info or {}).get("routing_key"), worker=request.hostname,
        task_id=request.id, attempt=(request.retries or 0) + 1, started_at=time.time(),
    )
    begin = store.begin_step(step.run_id, record, node.reads)
    if begin.state == "done" and begin.prior is not None:
        return begin.prior.result()
    if begin.state != "go":
        reason = "the run was cancelled" if begin.state == "cancelled" else "the run is gone"
        return StepResult(path=step.path, status="failed", error=reason, error_type="Cancelled")

    ctx = StepContext(input=begin.input, outputs=begin.outputs, models=spec.models,
                      http=resources.http(), step_tag=f"{step.run_id}/{step.path}",
                      item=step.item, index=step.index)
    try:
        outcome = work(ctx, node, spec)
        if final and node.step.gate is not None:
            check_gate(node.step.gate, outcome.output, ctx)
        record.status, record.output = "succeeded", outcome.output
        record.usage, record.detail = outcome.usage, outcome.detail
    except StepError as exc:
        record.status, record.error, record.error_type = "failed", str(exc), type(exc).__name__
    except Exception as exc:  # a bug or an unexpected library error: keep it readable on the run
        log.exception("step %s of run %s raised", step.path, step.run_id)
        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        record.error_type = "InternalError"
    record.ended_at = time.time()
    store.end_step(step.run_id, record, node.publishes if final else ())
    return record.result()
