"""Leaf step tasks: one model call (`legato.llm`) or one tool call (`legato.tool`)."""

from __future__ import annotations

from typing import Any

from celery import Task

from pipeline.graph import Node
from pipeline.kinds import Outcome, StepContext, run_llm, run_tool
from pipeline.spec import Llm, Orchestrate, Pipeline, Tool
from tasks.base import journaled, upstream_failure
from workers.app import app


def _llm(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
    step = node.step
    if isinstance(step, Orchestrate):  # an orchestrator's worker, on one subtask
        return run_llm(step.worker, ctx, subtask=ctx.item)
    assert isinstance(step, Llm)
    return run_llm(step, ctx)


def _tool(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
    assert isinstance(node.step, Tool)
    return run_tool(node.step, ctx)


@app.task(name="legato.llm", bind=True)
def llm(self: Task, prev: Any = None, *, step: dict[str, Any]) -> dict[str, Any]:
    if failed := upstream_failure(prev):
        return failed
    final = step.get("index") is None  # vote members and orchestrator workers feed a fan-in
    return journaled(self, step, "llm", _llm, final=final).wire()


@app.task(name="legato.tool", bind=True)
def tool(self: Task, prev: Any = None, *, step: dict[str, Any]) -> dict[str, Any]:
    if failed := upstream_failure(prev):
        return failed
    return journaled(self, step, "tool", _tool, final=True).wire()
