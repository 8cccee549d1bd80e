"""Pipeline -> Celery canvas: the one place that knows canvas shapes.

    llm, tool     one task on its queue
    chain         celery.chain of its steps
    route         a router task, which replaces itself with the chosen branch (on its queue)
    parallel      chord(group(sections or votes), aggregate)
    orchestrate   a plan task, which replaces itself with chord(group(work...), synthesize)

A step's queue is its own `queue`, else the nearest enclosing step's, else its kind's default.
Messages carry a `StepInput` (run id, spec hash, step path) and nothing else.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature

from pipeline.envelope import StepInput
from pipeline.spec import Chain, Llm, Orchestrate, Parallel, Pipeline, Route, Step, Tool

CONTROL = "legato.control"
LLM = "legato.llm"
TOOLS = "legato.tools"
DEFAULT_QUEUES = (CONTROL, LLM, TOOLS)


class Compiler:
    def __init__(self, app: Celery, run_id: str, spec_hash: str) -> None:
        self.app = app
        self.run_id = run_id
        self.spec_hash = spec_hash

    def _task(self, name: str, queue: str, node: str, *, path: str | None = None,
              index: int | None = None, item: Any = None) -> Signature:
        envelope = StepInput(run_id=self.run_id, spec_hash=self.spec_hash, node=node,
                             path=path or node, index=index, item=item)
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
        if isinstance(step, Tool):
            return self._task("legato.tool", queue or TOOLS, path)
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
                               path=f"{node}[{i}]", index=i)
                    for i in range(step.vote.n)
                ]
            else:
                members = [self.step(s, f"{path}/{s.id}", queue) for s in step.sections or []]
            by_model = step.aggregate.method == "llm"
            fan_in = self._task("legato.aggregate", queue or (LLM if by_model else CONTROL), path)
            return chord(group(members), fan_in)
        if isinstance(step, Orchestrate):
            return self._task("legato.plan", queue or LLM, path, path=f"{path}/plan")
        raise TypeError(f"no canvas for step kind {type(step).__name__}")

    def branch(self, route: Route, path: str, name: str, queue: str | None) -> Signature:
        """The chosen branch of a route, on the branch's queue (else the route's, inherited)."""
        branch = route.branches[name]
        return self.step(branch, f"{path}/{branch.id}", queue)

    def workers(self, step: Orchestrate, path: str, subtasks: list[Any],
                queue: str | None) -> Signature:
        """The orchestrator's fan-out: one worker task per subtask, then the synthesizer."""
        work = [
            self._task("legato.llm", queue or LLM, path, path=f"{path}/worker[{i}]", index=i,
                       item=subtask)
            for i, subtask in enumerate(subtasks)
        ]
        synthesize = self._task("legato.synthesize", queue or LLM, path, item=subtasks)
        return chord(group(work), synthesize)
