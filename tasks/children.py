"""`legato.pipeline`: a `pipeline` step starts its child run (once), then parks on it through
the waits primitive (legato.waits), holding no task and no worker slot. The child's end signals
the step (RunStore.finish_run); the resumed delivery takes the child's outcome as its own.

A child runs as its parent's tenant, at its parent's priority: its tokens and cost are its
parent's tenant's. It does not pass admission (legato.admission): its parent holds the tenant's
slot while it waits, and a child held for a slot that only its waiting parent could free would
never start. Its usage is charged to the tenant when it ends (Admission.settle).
"""

from __future__ import annotations

import time
from typing import Any

from legato.client import Legato, check_input
from legato.context import Outcome, StepContext
from legato.envelope import RunRecord, StepInput
from legato.errors import InputError, PermanentError, RunNotFound, SpecError
from legato.graph import Node
from legato.kinds.child import PipelineStep, child_run_id, render_input, settle
from legato.spec import Pipeline
from legato.tasks.base import StepTask, journaled, step_task, upstream_failure
from legato.tasks.waiting import park_or_take
from legato.workers import resources
from legato.workers.app import app


def start_child(client: Legato, parent: RunRecord, path: str, pipeline: str, input: Any, *,
                run_id: str, max_depth: int) -> RunRecord:
    """Start (once) the child run `run_id` of the `pipeline` step at `path` of `parent`: a
    pipeline named in the pipelines directory, its input checked, its spec pinned, its tenant and
    priority the parent's. A second call (a redelivered step) finds the child and starts nothing;
    a child whose first call died before sending it is sent by the sweeper's stall recovery.
    Raises SpecError or InputError (nothing written), or PermanentError past the depth limit."""
    store = client.store
    try:
        return store.get_run(run_id)
    except RunNotFound:
        pass
    depth = parent.depth + 1
    if depth > max_depth:
        raise PermanentError(f"child pipeline {pipeline!r} would run {depth} levels deep, "
                             f"over the limit of {max_depth} (LEGATO_MAX_PIPELINE_DEPTH)")
    spec = client.load_named(pipeline)
    check_input(spec, input, max_bytes=client.settings.max_input_bytes)
    record = RunRecord(id=run_id, pipeline=spec.name, spec_hash=store.put_spec(spec),
                       status="queued", input=input, created_at=time.time(),
                       parent_run=parent.id, parent_step=path, depth=depth,
                       tenant=parent.tenant, priority=parent.priority)
    store.add_child(parent.id, path, run_id)  # first: a cancelled parent finds it
    store.create_run(record)
    client.enqueue(spec, run_id, record.spec_hash)
    if store.get_run(parent.id).done:  # it ended meanwhile: so does the child
        store.finish_run(run_id, "cancelled", error=f"its parent run {parent.id} ended")
    return store.get_run(run_id)


def _child(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
    step = node.step
    assert isinstance(step, PipelineStep)
    run_id, path = ctx.step.run_id, ctx.step.path
    store = resources.store()
    child_id = child_run_id(run_id, path)
    try:
        child = start_child(
            resources.client(app), store.get_run(run_id), path, step.pipeline,
            render_input(step.input, ctx), run_id=child_id,
            max_depth=resources.settings().max_pipeline_depth)
    except (SpecError, InputError) as exc:  # the child named or its input: no use retrying
        raise PermanentError(str(exc)) from None
    park_or_take(ctx, "pipeline", f"child run {child_id}", timeout=None,
                 detail={"child_run": child_id})
    return settle(step, store.get_run(child.id))


@step_task("legato.pipeline")
def pipeline(self: StepTask, prev: Any = None, *, step: StepInput) -> dict[str, Any]:
    """Start the child run, park until it ends; its output is the step's."""
    if failed := upstream_failure(prev):
        return failed
    return journaled(self, step, "pipeline", _child, final=True).wire()
