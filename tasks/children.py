"""`legato.pipeline`: a `pipeline` step starts its child run (once), then parks on it through
the waits primitive (legato.waits), holding no task and no worker slot. The child's end signals
the step (RunStore.finish_run); the resumed delivery takes the child's outcome as its own."""

from __future__ import annotations

from typing import Any

from legato.context import Outcome, StepContext
from legato.envelope import StepInput
from legato.errors import InputError, PermanentError, SpecError
from legato.graph import Node
from legato.kinds.child import PipelineStep, child_run_id, render_input, settle
from legato.spec import Pipeline
from legato.tasks.base import StepTask, journaled, step_task, upstream_failure
from legato.tasks.waiting import park_or_take
from legato.workers import resources
from legato.workers.app import app


def _child(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
    step = node.step
    assert isinstance(step, PipelineStep)
    run_id, path = ctx.step.run_id, ctx.step.path
    store = resources.store()
    child_id = child_run_id(run_id, path)
    try:
        child = resources.client(app).start_child(
            store.get_run(run_id), path, step.pipeline, render_input(step.input, ctx),
            run_id=child_id, max_depth=resources.settings().max_pipeline_depth)
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
