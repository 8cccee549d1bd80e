"""Loop tasks: each round (or turn) is one task that replaces itself with the next one.

Iteration `i` is journaled at `<step>/<label>[i]` and reads iteration `i-1`'s output from the
journal; the iteration that stops journals the step itself at `<step>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from celery import Task

from legato import graph, paths
from legato.compile import Compiler
from legato.context import Outcome, StepContext
from legato.envelope import StepInput, ToolCall
from legato.errors import BudgetExceeded
from legato.graph import Node
from legato.kinds.agent import Agent, agent_turn, awaiting_approval, decide, turn_path
from legato.kinds.evaluate import Evaluate, evaluate_round, next_move
from legato.spec import Pipeline, Step
from legato.tasks.base import StepTask, journaled, step_task, upstream_failure
from legato.tasks.waiting import park_or_take
from legato.workers import resources
from legato.workers.app import app


def _previous(envelope: StepInput, label: str) -> Any:
    """The output of the iteration before this one (None for the first)."""
    i = envelope.index or 0
    if not i:
        return None
    record = resources.store().get_step(envelope.run_id, paths.part(envelope.node, label, i - 1))
    return record.output if record else None


def _loop_step(envelope: StepInput) -> Step:
    return graph.node(resources.store().get_spec(envelope.spec_hash), envelope.node).step


def _go_on(task: Task, envelope: StepInput, label: str, *, step: int = 1,
           item: Any = None) -> NoReturn:
    """Become the next iteration (`step` 0: this iteration's `label` part), on the queue this
    one came from."""
    i = (envelope.index or 0) + step
    following = envelope.model_copy(update={"path": paths.part(envelope.node, label, i),
                                            "index": i, "item": item})
    compiler = Compiler(app, envelope.run_id, envelope.spec_hash)
    raise task.replace(compiler.again(task.name, following, task.request))


def _close(task: Task, step: StepInput, kind: str,
           outcome: Callable[[], Outcome]) -> dict[str, Any]:
    """Journal the loop step itself (gate and outputs included) with the final outcome."""
    closing = step.model_copy(update={"path": step.node, "index": None})
    return journaled(task, closing, kind, lambda *_: outcome(), final=True).wire()


@step_task("legato.evaluate")
def evaluate(self: StepTask, prev: Any = None, *, step: StepInput) -> dict[str, Any]:
    """One evaluator-optimizer round at `<step>/round[i]`; the last one closes the step."""
    if failed := upstream_failure(prev):
        return failed
    round_no = step.index or 0
    previous = _previous(step, "round")

    def work(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
        assert isinstance(node.step, Evaluate)
        return evaluate_round(node.step, ctx, round_no, previous)

    result = journaled(self, step, "round", work, final=False)
    if not result.ok:
        return result.wire()
    spec_step = _loop_step(step)
    assert isinstance(spec_step, Evaluate)
    move = next_move(spec_step, round_no, result.output, previous)
    if move is None:
        _go_on(self, step, "round")
    why, kept = move
    return _close(self, step, "evaluate", lambda: Outcome(kept, detail={
        "rounds": round_no + 1, "stopped": why, "best_round": result.output["best"]["round"]}))


@step_task("legato.agent")
def agent(self: StepTask, prev: Any = None, *, step: StepInput) -> dict[str, Any]:
    """One agent turn at `<step>/turn[i]`; the transcript is journaled with every turn, so a
    crash resumes from the last completed turn. The turn that answers closes the step."""
    if failed := upstream_failure(prev):
        return failed
    turn = step.index or 0
    if isinstance(step.item, dict) and step.item.get("approval"):
        return _approval(self, step, turn)
    last = _previous(step, "approval") or _previous(step, "turn")  # approved calls' results
    transcript = last["messages"] if last else None

    def work(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
        assert isinstance(node.step, Agent)
        return agent_turn(node.step, ctx, turn, transcript)

    result = journaled(self, step, "turn", work, final=False)
    if not result.ok:
        return result.wire()
    spec_agent = _loop_step(step)
    assert isinstance(spec_agent, Agent)
    answer = result.output["final"]
    if result.output.get("pending"):  # a call waits for a person: `<step>/approval[turn]`
        _go_on(self, step, "approval", step=0, item={"approval": True})
    if answer is None and turn + 1 < spec_agent.max_turns:
        _go_on(self, step, "turn")

    def close() -> Outcome:
        if answer is None:
            raise BudgetExceeded(f"the agent used its {turn + 1} turns without a final answer")
        calls = sum(1 for m in result.output["messages"] if m.get("role") == "tool")
        return Outcome(answer, detail={"turns": turn + 1, "tool_calls": calls})

    return _close(self, step, "agent", close)


def _approval(task: Task, step: StepInput, turn: int) -> dict[str, Any]:
    """Wait (parked) for the approver's decision on the turn's pending calls, carry it out,
    then go on to the next turn (or close the step, at the last)."""
    proposed = resources.store().get_step(step.run_id, turn_path(step.node, turn))
    assert proposed is not None and proposed.output is not None
    pending = [ToolCall.model_validate(c) for c in proposed.output["pending"]]

    def work(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
        assert isinstance(node.step, Agent)
        signal = park_or_take(ctx, "approval", awaiting_approval(pending), timeout=None,
                              detail={"proposed": [c.model_dump() for c in pending]})
        return decide(node.step, pending, signal, ctx, proposed.output["messages"])

    result = journaled(task, step, "approval", work, final=False)
    if not result.ok:
        return result.wire()
    spec_agent = _loop_step(step)
    assert isinstance(spec_agent, Agent)
    if turn + 1 < spec_agent.max_turns:
        _go_on(task, step.model_copy(update={"item": None}), "turn")
    return _close(task, step, "agent", lambda: _out_of_turns(turn))


def _out_of_turns(turn: int) -> Outcome:
    raise BudgetExceeded(f"the agent used its {turn + 1} turns without a final answer")
