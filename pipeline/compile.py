"""Pipeline -> Celery canvas: the one place that knows canvas shapes.

    llm, tool     one task on its queue
    chain         celery.chain of its steps
    route         a router task, which replaces itself with the chosen branch (on its queue)
    parallel      chord(group(sections or votes), aggregate)
    orchestrate   a plan task, which replaces itself with chord(group(work...), synthesize)
    evaluate      an evaluate task per round, each replacing itself with the next round
    agent         an agent task per turn, likewise

A step's queue is its own `queue`, else the nearest enclosing step's, else its kind's default.
Messages carry a `StepInput` (run id, spec hash, step path) and nothing else.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature

from pipeline.envelope import StepInput
from pipeline.spec import (
    Agent,
    Chain,
    Evaluate,
    Llm,
    Orchestrate,
    Parallel,
    Pipeline,
    Route,
    Step,
    Tool,
)
from pipeline.tools import ToolNotFound, get_tool

CONTROL = "legato.control"
LLM = "legato.llm"
TOOLS = "legato.tools"
DEFAULT_QUEUES = (CONTROL, LLM, TOOLS)


def _tool_queue(name: str) -> str | None:
    try:
        return get_tool(name).queue
    except ToolNotFound:
        return None


class Compiler:
    def __init__(self, app: Celery, run_id: str, spec_hash: str) -> None:
        self.app = app
        self.run_id = run_id
        self.spec_hash = spec_hash

    def _task(self, name: str, queue: str, node: str, *, path: str | None = None,
              index: int | None = None, item: Any = None,
              quorum: int | None = None) -> Signature:
        envelope = StepInput(run_id=self.run_id, spec_hash=self.spec_hash, node=node,
                             path=path or node, index=index, item=item, quorum=quorum)
        return self.app.signature(
            name, kwargs={"step": envelope.model_dump(mode="json", exclude_none=True)},
            queue=queue,
        )

    def run(self, pipeline: Pipeline) -> Signature:
        steps = [self.step(s, s.id) for s in pipeline.steps]
        finalize = self.app.signature(
            "legato.finalize", kwargs={"run_id": self.run_id, "spec_hash": self.spec_hash},
            queue=CONTROL,
        )
        return chain(*steps, finalize)

    def step(self, step: Step, path: str, queue: str | None = None) -> Signature:
        queue = step.queue or queue
        if isinstance(step, Llm):
            return self._task("legato.llm", queue or LLM, path)
        if isinstance(step, Tool):  # a tool may name its own queue (it needs that host, say)
            return self._task("legato.tool", step.queue or _tool_queue(step.tool) or queue
                              or TOOLS, path)
        if isinstance(step, Chain):
            return chain(*[self.step(s, f"{path}/{s.id}", queue) for s in step.steps])
        if isinstance(step, Route):
            by_model = step.classifier.model is not None
            return self._task("legato.route", queue or (LLM if by_model else CONTROL), path)
        if isinstance(step, Parallel):
            if step.vote is not None:
                vote = step.vote.step
                node = f"{path}/{vote.id}"
                members = [
                    self._task("legato.llm", vote.queue or queue or LLM, node,
                               path=f"{node}[{i}]", index=i, quorum=step.vote.quorum)
                    for i in range(step.vote.n)
                ]
            else:
                members = [self.step(s, f"{path}/{s.id}", queue) for s in step.sections or []]
            by_model = step.aggregate.method == "llm"
            fan_in = self._task("legato.aggregate", queue or (LLM if by_model else CONTROL), path)
            return chord(group(members), fan_in)
        if isinstance(step, Orchestrate):
            return self._task("legato.plan", queue or LLM, path, path=f"{path}/plan")
        if isinstance(step, Evaluate):
            return self._task("legato.evaluate", queue or LLM, path, path=f"{path}/round[0]",
                              index=0)
        if isinstance(step, Agent):
            return self._task("legato.agent", queue or LLM, path, path=f"{path}/turn[0]",
                              index=0)
        raise TypeError(f"no canvas for step kind {type(step).__name__}")

    def again(self, name: str, envelope: StepInput, request: Any) -> Signature:
        """The next round of a loop task, on the queue this one came from."""
        queue = (request.delivery_info or {}).get("routing_key") or LLM
        return self.app.signature(
            name, kwargs={"step": envelope.model_dump(mode="json", exclude_none=True)},
            queue=queue)

    def branch(self, route: Route, path: str, name: str, queue: str | None) -> Signature:
        """The chosen branch of a route, on the branch's queue (else the route's, inherited)."""
        branch = route.branches[name]
        return self.step(branch, f"{path}/{branch.id}", queue)

    def workers(self, step: Orchestrate, path: str, subtasks: list[Any], queue: str | None, *,
                start: int = 0, round_no: int = 0) -> Signature:
        """The orchestrator's fan-out: a worker task per new subtask (from `start`), then the
        synthesizer, which carries every subtask so far and the round."""
        work = [
            self._task("legato.llm", queue or LLM, path, path=f"{path}/worker[{i}]", index=i,
                       item=subtasks[i])
            for i in range(start, len(subtasks))
        ]
        synthesize = self._task("legato.synthesize", queue or LLM, path,
                                item={"subtasks": subtasks, "round": round_no})
        return chord(group(work), synthesize)
