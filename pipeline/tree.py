"""The one walk over a pipeline's step tree: where each step is in the file, its path, the queue
it inherits and the ids its output is known by. The loader, the graph and the compiler use it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from legato import paths
from legato.kinds import kind_of


@dataclass(frozen=True)
class Visit:
    where: str  # the step's place in the file: `steps[0].branches.billing`
    path: str  # its path: `triage/billing`
    step: Any  # a Step
    queue: str | None  # its own queue, else the nearest enclosing step's
    publishes: tuple[str, ...]  # the ids its output is known by (none for a chain or route)


def inherit_queue(step: Any, enclosing: str | None) -> str | None:
    """A step's queue: its own, else the nearest enclosing step's (else its kind's default,
    which the kind's compile picks)."""
    return step.queue or enclosing


def walk(steps: list[Any], where: str = "steps") -> Iterator[Visit]:
    """Every step, depth first, in file order."""
    for i, step in enumerate(steps):
        yield from _visit(step, f"{where}[{i}]", paths.child("", step.id), (step.id,), None)


def _visit(step: Any, where: str, path: str, publishes: tuple[str, ...],
           enclosing: str | None) -> Iterator[Visit]:
    kind = kind_of(step)
    queue = inherit_queue(step, enclosing)
    yield Visit(where, path, step, queue, () if kind.passes_output else publishes)
    for child in kind.children(step):
        known: tuple[str, ...] = {
            "own": (child.step.id,),
            "inherit": _unique(child.step.id, *publishes),
            "none": (),
        }[child.publishes]
        yield from _visit(child.step, f"{where}.{child.where}", paths.child(path, child.step.id),
                          known, queue)


def templates(step: Any) -> Iterator[tuple[str, str, bool]]:
    """(field, text, is an expression) for every template a step itself holds, gate and
    concurrency key included."""
    if step.gate is not None:
        yield "gate.check", step.gate.check, True
    if step.concurrency is not None:
        yield "concurrency.key", step.concurrency.key, False
    yield from kind_of(step).templates(step)


def _unique(*ids: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(ids))
