"""Leaf step tasks: one model call (`legato.llm`) or one tool call (`legato.tool`); several
model-call steps in one task — a chain's consecutive steps in order (`legato.segment`), a fan-out's
members at once (`legato.llm_batch`). Every step is journaled on its own either way."""

from __future__ import annotations

import time
import uuid
from typing import Any

from celery.exceptions import Ignore, Retry

from legato.context import Outcome, StepContext
from legato.envelope import StepInput, StepRecord
from legato.graph import Node
from legato.kinds import llm as llm_kind
from legato.kinds import tool as tool_kind
from legato.kinds.llm import Llm
from legato.kinds.orchestrate import Orchestrate
from legato.kinds.tool import Tool
from legato.lua import Part
from legato.spec import Pipeline
from legato.tasks.base import (
    StepTask,
    journal_step,
    journaled,
    journaled_many,
    step_task,
    upstream_failure,
)
from legato.tasks.finish import Handoff, close_run
from legato.workers import lifeline, resources


def _llm(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
    step = node.step
    if isinstance(step, Orchestrate):  # an orchestrator's worker, on one subtask
        return llm_kind.run(step.worker, ctx, subtask=_subtask(ctx))
    assert isinstance(step, Llm)
    return llm_kind.run(step, ctx)


def _subtask(ctx: StepContext) -> Any:
    """A worker's subtask, from the plan records (its message names the round and its index;
    one sent before messages stopped carrying subtasks holds the subtask itself)."""
    if not (isinstance(ctx.item, dict) and set(ctx.item) == {"round"}):
        return ctx.item
    assert ctx.index is not None
    return resources.store().subtasks(ctx.step.run_id, ctx.node, ctx.item["round"])[ctx.index]


def _tool(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
    assert isinstance(node.step, Tool)
    return tool_kind.run(node.step, ctx)


@step_task("legato.llm")
def llm(self: StepTask, prev: Any = None, *, step: StepInput) -> dict[str, Any]:
    if failed := upstream_failure(prev):
        return failed
    quorum = step.quorum
    if quorum and resources.ballot().reached(step.run_id, step.node):
        return _skip(step, "the vote's quorum was already reached")
    final = step.index is None  # vote members and orchestrator workers feed a fan-in
    result = journaled(self, step, "llm", _llm, final=final)
    if quorum and result.ok:
        resources.ballot().cast(step.run_id, step.node, result.path, result.output, quorum)
    return result.wire()


def _skip(step: StepInput, reason: str) -> dict[str, Any]:
    record = StepRecord(path=step.path, status="skipped", kind="llm", started_at=time.time(),
                        ended_at=time.time(), detail={"skipped": reason})
    resources.store().skip_step(step.run_id, record)
    return record.result().wire()


@step_task("legato.tool")
def tool(self: StepTask, prev: Any = None, *, step: StepInput) -> dict[str, Any]:
    if failed := upstream_failure(prev):
        return failed
    return journaled(self, step, "tool", _tool, final=True).wire()


@step_task("legato.segment", on_loop=True)
def segment(self: StepTask, prev: Any = None, *, steps: list[StepInput],
            finalize: bool = False) -> dict[str, Any]:
    """Chain steps that share a queue, in order, stopping at the first failure; `finalize`: the
    run's last steps, so close the run here too. A redelivery skips the steps already done."""
    result = upstream_failure(prev)
    handoff: Handoff | None = None  # each step's end rides the next begin (or the finish)
    journal = resources.store().journal
    # The segment's signature, kept once for its steps' leases, under a name of this delivery's
    # own (a duplicate that finds a step busy lets its own go, never the live one's).
    ref = f"@@{self.request.id}:{uuid.uuid4().hex[:8]}"
    keep = [journal.keep_signature(ref, lifeline.signature_json(self))]
    forget: tuple[Part, ...] = ()
    try:
        for step in steps if result is None else ():
            first = [*keep, *(handoff.parts if handoff else ())]
            keep, forget = [], (journal.forget_signature(ref),)
            done, handoff = journal_step(self, step, "llm", _llm, final=True, first=first,
                                         signature=ref, hand_off=True)
            result = done.wire()
            if result["status"] != "succeeded":
                break
    except (Ignore, Retry):  # busy, or retrying later: no lease of this delivery refers to it
        if forget:
            journal.end_with(list(forget))
        raise
    if finalize:
        close_run(steps[0].run_id, steps[0].spec_hash, result, last=handoff, also=forget)
    elif handoff is not None or forget:
        journal.end_with([*(handoff.parts if handoff else ()), *forget])
    return result or {}


@step_task("legato.llm_batch")
def llm_batch(self: StepTask, prev: Any = None, *, steps: list[StepInput]) -> list[Any]:
    """A vote's members or an orchestrator's workers, run concurrently in this task; their
    results, as a list, feed the chord's fan-in like single members' results do."""
    if failed := upstream_failure(prev):
        return [failed]
    return [r.wire() for r in journaled_many(self, steps, "llm", _llm)]
