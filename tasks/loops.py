"""Loop tasks: each round (or turn) is one task that replaces itself with the next one."""

from __future__ import annotations

from typing import Any

from celery import Task

from pipeline import graph
from pipeline.compile import Compiler
from pipeline.envelope import StepInput
from pipeline.errors import BudgetExceeded
from pipeline.graph import Node
from pipeline.kinds import Outcome, StepContext
from pipeline.loops import agent_turn, evaluate_round, next_move
from pipeline.spec import Agent, Evaluate, Pipeline
from tasks.base import journaled, upstream_failure
from workers import resources
from workers.app import app


@app.task(name="legato.evaluate", bind=True)
def evaluate(self: Task, prev: Any = None, *, step: dict[str, Any]) -> dict[str, Any]:
    """One evaluator-optimizer round at `<step>/round[i]`; the last one closes the step."""
    if failed := upstream_failure(prev):
        return failed
    envelope = StepInput.model_validate(step)
    round_no = envelope.index or 0
    store = resources.store()
    previous_record = (store.get_step(envelope.run_id, f"{envelope.node}/round[{round_no - 1}]")
                       if round_no else None)
    previous = previous_record.output if previous_record else None

    def work(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
        assert isinstance(node.step, Evaluate)
        return evaluate_round(node.step, ctx, round_no, previous)

    result = journaled(self, step, "round", work, final=False)
    if not result.ok:
        return result.wire()
    spec = store.get_spec(envelope.spec_hash)
    evaluate_step = spec_step(spec, envelope.node)
    move = next_move(evaluate_step, round_no, result.output, previous)
    if move is None:
        following = envelope.model_copy(update={"path": f"{envelope.node}/round[{round_no + 1}]",
                                                "index": round_no + 1})
        compiler = Compiler(app, envelope.run_id, envelope.spec_hash)
        raise self.replace(compiler.again("legato.evaluate", following, self.request))
    why, kept = move

    def close(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
        return Outcome(kept, detail={"rounds": round_no + 1, "stopped": why,
                                     "best_round": result.output["best"]["round"]})

    closing = {**step, "path": envelope.node, "index": None}
    return journaled(self, closing, "evaluate", close, final=True).wire()


def spec_step(spec: Pipeline, node: str) -> Evaluate:
    found = graph.node(spec, node).step
    assert isinstance(found, Evaluate)
    return found


@app.task(name="legato.agent", bind=True)
def agent(self: Task, prev: Any = None, *, step: dict[str, Any]) -> dict[str, Any]:
    """One agent turn at `<step>/turn[i]`; the transcript is journaled with every turn, so a
    crash resumes from the last completed turn. The turn that answers closes the step."""
    if failed := upstream_failure(prev):
        return failed
    envelope = StepInput.model_validate(step)
    turn = envelope.index or 0
    store = resources.store()
    last = store.get_step(envelope.run_id, f"{envelope.node}/turn[{turn - 1}]") if turn else None
    transcript = last.output["messages"] if last and last.output else None

    def work(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
        assert isinstance(node.step, Agent)
        return agent_turn(node.step, ctx, turn, transcript)

    result = journaled(self, step, "turn", work, final=False)
    if not result.ok:
        return result.wire()
    spec_agent = graph.node(store.get_spec(envelope.spec_hash), envelope.node).step
    assert isinstance(spec_agent, Agent)
    answer = result.output["final"]
    if answer is None and turn + 1 < spec_agent.max_turns:
        following = envelope.model_copy(update={"path": f"{envelope.node}/turn[{turn + 1}]",
                                                "index": turn + 1})
        compiler = Compiler(app, envelope.run_id, envelope.spec_hash)
        raise self.replace(compiler.again("legato.agent", following, self.request))

    def close(ctx: StepContext, node: Node, _: Pipeline) -> Outcome:
        if answer is None:
            raise BudgetExceeded(f"the agent used its {turn + 1} turns without a final answer")
        calls = sum(1 for m in result.output["messages"] if m.get("role") == "tool")
        return Outcome(answer, detail={"turns": turn + 1, "tool_calls": calls})

    closing = {**step, "path": envelope.node, "index": None}
    return journaled(self, closing, "agent", close, final=True).wire()
