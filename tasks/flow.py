"""Control-flow tasks: route, fan-in (aggregate, synthesize) and plan."""

from __future__ import annotations

from typing import Any

from legato import graph, paths
from legato.compile import Compiler
from legato.context import Outcome, StepContext
from legato.envelope import StepInput, StepResult
from legato.errors import StepError
from legato.graph import Node
from legato.kinds import llm as llm_kind
from legato.kinds.base import fan_in
from legato.kinds.orchestrate import Orchestrate, plan, plan_path, worker_path
from legato.kinds.parallel import Parallel, aggregate
from legato.kinds.route import Route, decide
from legato.spec import Pipeline
from legato.tasks.base import StepTask, Work, journaled, step_task, upstream_failure
from legato.workers import resources
from legato.workers.app import app


def _node_and_compiler(step: StepInput) -> tuple[Node, Compiler]:
    spec = resources.store().get_spec(step.spec_hash)
    node = graph.node(spec, step.node)
    return node, Compiler(app, step.run_id, step.spec_hash, fuse=spec.fuse,
                          batch_size=resources.settings().batch_size)


def _route(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
    assert isinstance(node.step, Route)
    return decide(node.step, ctx)


@step_task("legato.route")
def route(self: StepTask, prev: Any = None, *, step: StepInput) -> dict[str, Any]:
    """Classify, journal the decision, then become the chosen branch on its own queue."""
    if failed := upstream_failure(prev):
        return failed
    result = journaled(self, step, "route", _route, final=False)
    if not result.ok:
        return result.wire()
    node, compiler = _node_and_compiler(step)
    assert isinstance(node.step, Route)
    raise self.replace(compiler.branch(node.step, node.path, result.output["branch"], node.queue))


def _plan(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
    assert isinstance(node.step, Orchestrate)
    return plan(node.step, ctx)


@step_task("legato.plan")
def plan_task(self: StepTask, prev: Any = None, *, step: StepInput) -> dict[str, Any]:
    """Ask the planner for subtasks, then become chord(workers, synthesizer)."""
    if failed := upstream_failure(prev):
        return failed
    result = journaled(self, step, "plan", _plan, final=False)
    if not result.ok:
        return result.wire()
    node, compiler = _node_and_compiler(step)
    assert isinstance(node.step, Orchestrate)
    raise self.replace(
        compiler.workers(node.step, node.path, result.output["subtasks"], node.queue))


def _wire_results(results: Any) -> list[StepResult]:
    items = results if isinstance(results, list) else [results]  # a one-member group
    flat: list[Any] = []
    for item in items:  # a batch task returns its members' results as a list
        flat.extend(item if isinstance(item, list) else [item])
    return [StepResult.model_validate(r) for r in flat]


def _upstream_of(results: list[StepResult], own: str) -> StepResult | None:
    # A failure from before the fan-out reached every member: pass it on, it is not ours.
    return next((r for r in results if not r.ok and not paths.is_under(r.path, own)), None)


def _fan_in(results: list[StepResult], run_id: str) -> Work:
    def work(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
        step = node.step
        assert isinstance(step, Parallel | Orchestrate)
        kept, failed = fan_in(results, on_failure=step.on_failure, min_success=step.min_success)
        # Results travel slim; the branches' outputs are read from the journal, in one trip.
        records = resources.store().get_steps_at(run_id, [r.path for r in kept])
        detail = {"succeeded": len(kept), "failed": [r.path for r in failed]}
        if isinstance(step, Parallel):
            outcome = aggregate(step.aggregate, list(records), ctx)
        else:
            subtasks = resources.store().subtasks(run_id, node.path, ctx.item["round"])
            done = _done_so_far(run_id, node.path, subtasks)
            outcome = llm_kind.run(step.synthesizer, ctx, results=done)
        outcome.detail.update(detail)
        return outcome

    return work


def _failing(exc: StepError) -> Work:
    def work(*_: Any) -> Outcome:
        raise exc

    return work


def _done_so_far(run_id: str, path: str, subtasks: list[Any]) -> list[dict[str, Any]]:
    """Every round's finished subtasks with their outputs."""
    records = resources.store().get_steps_at(
        run_id, [worker_path(path, i) for i in range(len(subtasks))])
    return [{"subtask": subtasks[i], "output": r.output}
            for i, r in enumerate(records) if r.ok]


@step_task("legato.aggregate")
def aggregate_task(self: StepTask, results: Any, *, step: StepInput) -> dict[str, Any]:
    items = _wire_results(results)
    if upstream := _upstream_of(items, step.node):
        return upstream.wire()
    work = _fan_in(items, step.run_id)
    return journaled(self, step, "parallel", work, final=True).wire()


@step_task("legato.synthesize")
def synthesize(self: StepTask, results: Any, *, step: StepInput) -> dict[str, Any]:
    """Close a round of workers: ask the planner for another round if rounds are left (and it
    wants one), else synthesize every round's results. A round that fails its policy fails the
    step at once, whatever rounds are left."""
    items = _wire_results(results)
    if upstream := _upstream_of(items, step.node):
        return upstream.wire()
    node, compiler = _node_and_compiler(step)
    orchestrate = node.step
    assert isinstance(orchestrate, Orchestrate)
    round_no = step.item["round"]
    if round_no + 1 < orchestrate.max_rounds:
        try:  # this round must hold up first
            fan_in(items, on_failure=orchestrate.on_failure, min_success=orchestrate.min_success)
        except StepError as exc:
            return journaled(self, step, "orchestrate", _failing(exc), final=True).wire()
        subtasks = resources.store().subtasks(step.run_id, node.path, round_no)
        done = _done_so_far(step.run_id, node.path, subtasks)

        def replan(ctx: StepContext, _: Node, __: Pipeline) -> Outcome:
            return plan(orchestrate, ctx, round_no=round_no + 1, results=done)

        planning = step.model_copy(update={"path": plan_path(node.path, round_no + 1)})
        more = journaled(self, planning, "plan", replan, final=False)
        if not more.ok:
            return more.wire()
        if more.output["subtasks"]:
            every = subtasks + more.output["subtasks"]
            raise self.replace(compiler.workers(orchestrate, node.path, every, node.queue,
                                                start=len(subtasks), round_no=round_no + 1))
    work = _fan_in(items, step.run_id)
    return journaled(self, step, "orchestrate", work, final=True).wire()
