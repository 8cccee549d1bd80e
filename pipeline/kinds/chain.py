"""`chain`: steps run in order; a gate on a step stops the chain. The last step's output is the
chain's (it publishes under the chain's id too)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from legato.fields import StepBase
from legato.kinds.base import Child, Kind

if TYPE_CHECKING:
    from celery.canvas import Signature

    from legato.compile import Compiler
    from legato.spec import Step


class Chain(StepBase):
    kind: Literal["chain"] = "chain"
    steps: list[Step] = Field(min_length=1)


class ChainKind(Kind):
    name = "chain"
    spec = Chain
    passes_output = True

    def children(self, step: Chain) -> Iterator[Child]:
        last = len(step.steps) - 1
        for i, child in enumerate(step.steps):
            yield Child(f"steps[{i}]", child, "inherit" if i == last else "own")

    def compile(self, step: Chain, path: str, queue: str | None, compiler: Compiler) -> Signature:
        from celery import chain

        return chain(*compiler.sequence(step.steps, path, queue))
