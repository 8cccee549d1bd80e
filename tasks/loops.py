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
from legato.envelope import StepInput
from legato.errors import BudgetExceeded
from legato.graph import Node
from legato.kinds.agent import Agent, agent_turn
from legato.kinds.evaluate import Evaluate, evaluate_round, next_move
from legato.spec import Pipeline, Step
from legato.tasks.base import StepTask, journaled, step_task, upstream_failure
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


def _go_on(task: Task, envelope: StepInput, label: str) -> NoReturn:
    """Become the next iteration, on the queue this one came from."""
    i = (envelope.index or 0) + 1
    following = envelope.model_copy(update={"path": paths.part(envelope.node, label, i),
                                            "index": i})
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
    last = _previous(step, "turn")
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
    if answer is None and turn + 1 < spec_agent.max_turns:
        _go_on(self, step, "turn")

    def close() -> Outcome:
        if answer is None:
            raise BudgetExceeded(f"the agent used its {turn + 1} turns without a final answer")
        calls = sum(1 for m in result.output["messages"] if m.get("role") == "tool")
        return Outcome(answer, detail={"turns": turn + 1, "tool_calls": calls})

    return _close(self, step, "agent", close)
