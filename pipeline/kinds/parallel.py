"""`parallel`: sections run at once, or one step run `n` times as a vote; a fan-in combines
their outputs (concat, merge, majority, or a model) under the step's failure policy."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from legato import paths
from legato.context import Outcome, StepContext
from legato.envelope import StepResult
from legato.fields import FanOutPolicy, StepBase, Strict
from legato.kinds.base import Child, Kind, call_templates
from legato.kinds.llm import Llm
from legato.queues import CONTROL, LLM

if TYPE_CHECKING:
    from celery.canvas import Signature

    from legato.compile import Compiler
    from legato.spec import Step


class Aggregate(Strict):
    """How a parallel step combines its branches' outputs."""

    method: Literal["concat", "merge", "majority", "llm"] = "concat"
    model: str | None = None
    prompt: str | None = None
    system: str | None = None
    output_schema: dict[str, Any] | None = None
    separator: str = "\n\n"

    @model_validator(mode="after")
    def _llm_needs_model(self) -> Aggregate:
        if self.method == "llm" and not (self.model and self.prompt):
            raise ValueError("method `llm` needs `model` and `prompt`")
        return self


class Vote(Strict):
    step: Llm
    n: int = Field(3, ge=2, le=1000)
    quorum: int | None = Field(
        None, ge=1, description="once this many voters agree, the voters not yet begun skip")

    @model_validator(mode="after")
    def _quorum_fits(self) -> Vote:
        if self.quorum is not None and self.quorum > self.n:
            raise ValueError(f"quorum {self.quorum} is more than the {self.n} voters")
        return self


class Parallel(StepBase, FanOutPolicy):
    kind: Literal["parallel"] = "parallel"
    sections: list[Step] | None = None
    vote: Vote | None = None
    aggregate: Aggregate = Aggregate()

    @model_validator(mode="after")
    def _sections_or_vote(self) -> Parallel:
        if (self.sections is None) == (self.vote is None):
            raise ValueError("give either `sections` or `vote`")
        if self.sections is not None and not self.sections:
            raise ValueError("`sections` is empty")
        return self


def aggregate(agg: Aggregate, kept: list[StepResult], ctx: StepContext) -> Outcome:
    """Combine the kept branches' outputs (read from the journal) by the aggregate's method."""
    outputs = [r.output for r in kept]
    if agg.method == "concat":
        return Outcome(agg.separator.join(_text(o) for o in outputs))
    if agg.method == "merge":
        merged: dict[str, Any] = {}
        for r in kept:
            if isinstance(r.output, dict):
                merged.update(r.output)
            else:
                merged[paths.leaf(r.path)] = r.output
        return Outcome(merged)
    if agg.method == "majority":
        counts = Counter(json.dumps(o, sort_keys=True) for o in outputs)
        winner, votes = max(counts.items(), key=lambda kv: kv[1])  # first seen wins a tie
        return Outcome(json.loads(winner), detail={"votes": votes, "of": len(outputs)})
    assert agg.model and agg.prompt
    sections = {paths.leaf(r.path): r.output for r in kept}
    return ctx.model_call(agg.model, agg.prompt, system=agg.system,
                          output_schema=agg.output_schema, results=outputs, sections=sections)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class ParallelKind(Kind):
    name = "parallel"
    spec = Parallel

    def children(self, step: Parallel) -> Iterator[Child]:
        for i, section in enumerate(step.sections or []):
            yield Child(f"sections[{i}]", section, "own")
        if step.vote is not None:
            yield Child("vote.step", step.vote.step, "none")

    def templates(self, step: Parallel) -> Iterator[tuple[str, str, bool]]:
        return call_templates(step.aggregate, "aggregate")

    def schemas(self, step: Parallel) -> Iterator[tuple[str, dict[str, Any]]]:
        if step.aggregate.output_schema:
            yield "aggregate.output_schema", step.aggregate.output_schema

    def aliases(self, step: Parallel) -> Iterator[tuple[str, str]]:
        if step.aggregate.model:
            yield "aggregate.model", step.aggregate.model

    def compile(self, step: Parallel, path: str, queue: str | None,
                compiler: Compiler) -> Signature:
        from celery import chord, group

        if step.vote is not None:
            members = self._votes(step, path, queue, compiler)
        else:
            members = [compiler.step(s, paths.child(path, s.id), queue)
                       for s in step.sections or []]
        by_model = step.aggregate.method == "llm"
        fan_in = compiler.task("legato.aggregate", queue or (LLM if by_model else CONTROL), path)
        return chord(group(members), fan_in)

    @staticmethod
    def _votes(step: Parallel, path: str, queue: str | None,
               compiler: Compiler) -> list[Signature]:
        """A vote's members: a task each when a quorum may skip the later ones, else batches
        that run their members concurrently."""
        assert step.vote is not None
        vote, n, quorum = step.vote.step, step.vote.n, step.vote.quorum
        node, queue = paths.child(path, vote.id), vote.queue or queue or LLM
        if quorum is not None or vote.concurrency is not None:  # one task a member
            return [compiler.task("legato.llm", queue, node, path=paths.member(node, i), index=i,
                                  quorum=quorum) for i in range(n)]
        return compiler.members([compiler.envelope(node, path=paths.member(node, i), index=i)
                                 for i in range(n)], queue)
