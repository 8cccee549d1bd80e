"""Steps that wait: `legato.wait` parks until a signal comes (legato.waits), and the public
`legato.signal` sends one from any Celery client:

    send_task("legato.signal", kwargs={"run_id": "...", "step": "approve",
                                       "data": {"approved": true}, "by": "ana"})

It returns `{"run_id", "path", "state"}` (`resumed` or `stored`); a refused signal (no such run
or step, not a wait, a finished run, a payload off the schema, already signalled) fails the task
with its one-line error and no traceback, and changes nothing.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Task
from celery.utils.log import get_task_logger

from legato import graph, paths
from legato.compile import Compiler
from legato.context import Outcome, StepContext
from legato.envelope import StepInput, StepRecord
from legato.errors import LegatoError
from legato.graph import Node
from legato.kinds import wait as wait_kind
from legato.kinds.wait import Wait
from legato.spec import Pipeline
from legato.tasks import stages
from legato.tasks.base import StepTask, journaled, step_task, upstream_failure
from legato.tasks.submit import SubmitFailed, _fail, _legato, _one_line
from legato.waits import Parked
from legato.workers import resources
from legato.workers.app import app

logger = get_task_logger(__name__)


def park_or_take(ctx: StepContext, kind: str, waits_for: str, *, timeout: float | None,
                 detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """The signal stored for this step, or park it (raises Parked: the task ends, holding
    nothing, and the signal's sender sends it again). The one way a step waits."""
    now = time.time()
    deadline = None if timeout is None else now + timeout
    record = StepRecord(path=ctx.step.path, status="waiting", kind=kind, started_at=now,
                        detail={"waiting_for": waits_for, "since": now,
                                **({"deadline": deadline} if deadline else {}),
                                **(detail or {})})
    arrival = resources.store().waits.arrive(ctx.step.run_id, record, token=ctx.lease, now=now,
                                             deadline=deadline, waits_for=waits_for)
    if arrival.state != "signal" or arrival.signal is None:
        raise Parked()
    return arrival.signal


def _wait(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
    step = node.step
    assert isinstance(step, Wait)
    signal = park_or_take(ctx, "wait", wait_kind.awaiting(step, ctx.step.path),
                          timeout=step.timeout)
    return wait_kind.outcome(step, signal)


@step_task("legato.wait")
def wait(self: StepTask, prev: Any = None, *, step: StepInput) -> dict[str, Any]:
    """Park until a signal (or the timeout) comes; the signal's payload is the output."""
    if failed := upstream_failure(prev):
        return failed
    result = journaled(self, step, "wait", _wait, final=True)
    wait_step = graph.node(resources.store().get_spec(step.spec_hash), step.node).step
    if result.ok and isinstance(wait_step, Wait) and wait_step.jump_to:
        _jump_if_timed_out(self, step, wait_step.jump_to)
    return result.wire()


def _jump_if_timed_out(task: Task, step: StepInput, target: str) -> None:
    """After a timeout that jumps (on this delivery or a memoized one): continue at the target
    step, so the steps between never run. A top-level wait's continuation is the run's next
    stage (tasks/stages.py): it becomes the target's stage; inside a chain, the chain's next
    tasks up to the target step's are dropped."""
    record = resources.store().get_step(step.run_id, step.path)
    if record is None or not record.detail.get("timed_out"):
        return
    if not paths.parent(step.node):
        spec = resources.store().get_spec(step.spec_hash)
        at = Compiler(app, step.run_id, step.spec_hash, fuse=spec.fuse).stage_of(spec, target)
        if at is not None:
            stages.set_stage(task, step, at)
            return
    chain = list(task.request.chain or [])  # the continuation, its next task last
    target_path = paths.child(paths.parent(step.node), target)
    while chain and wait_kind.jumps_past(chain[-1], target_path):
        chain.pop()
    if not chain:
        logger.warning("run %s: no task of step %s after %s; the chain goes on as it was",
                       step.run_id, target_path, step.path)
        return
    task.request.chain = chain


@app.task(name="legato.signal", bind=True, ignore_result=False)
def signal(self: Task, *, run_id: str, step: str, data: Any = None,
           by: str | None = None) -> dict[str, str]:
    try:
        reply = _legato().signal(run_id, step, data, by=by)
    except LegatoError as exc:
        logger.warning("refused a signal: run=%s step=%s: %s: %s", _one_line(str(run_id), 64),
                       _one_line(str(step), 200), type(exc).__name__, _one_line(str(exc), 500))
        _fail(self, exc)
    except Exception as exc:  # the details stay in the worker's log
        logger.exception("legato.signal failed")
        _fail(self, SubmitFailed(f"signal failed on the worker ({type(exc).__name__}); "
                                 f"task id {self.request.id}"))
    return {"run_id": reply.run_id, "path": reply.path, "state": reply.state}
