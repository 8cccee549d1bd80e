"""A pipeline's steps indexed by static path, with what each reads and publishes.

Paths are step ids joined by `/` from the top (`triage/billing/reply`). Fan-out instances add an
index (`vote_step[3]`). A node *publishes* its output under its own id and under the ids of the
composites whose output it is (the last step of a chain, a route's branches), so templates read any
step's output by id without knowing the shape of the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from legato import loader, templates
from legato.spec import Chain, Parallel, Pipeline, Route, Step


@dataclass(frozen=True)
class Node:
    path: str
    step: Step
    publishes: tuple[str, ...]
    reads: tuple[str, ...]
    queue: str | None  # its own queue, else the nearest enclosing step's


def _add(
    index: dict[str, Node], step: Step, path: str, publishes: tuple[str, ...], queue: str | None
) -> None:
    """Index `step` and its descendants; `publishes` are the ids its output is known by."""
    reads: set[str] = set()
    for _, text, is_expr in loader.step_templates(step, path):
        reads |= templates.referenced_outputs(text, expression=is_expr)
    # A chain or a route has no output of its own: its last step or its branch publishes for it.
    own = () if isinstance(step, Chain | Route) else publishes
    queue = step.queue or queue
    index[path] = Node(path, step, own, tuple(sorted(reads)), queue)
    if isinstance(step, Chain):
        _add_list(index, step.steps, path, publishes, queue)
    elif isinstance(step, Route):
        for branch in step.branches.values():
            _add(index, branch, f"{path}/{branch.id}", _unique(branch.id, *publishes), queue)
    elif isinstance(step, Parallel):
        for section in step.sections or []:
            _add(index, section, f"{path}/{section.id}", (section.id,), queue)
        if step.vote is not None:
            _add(index, step.vote.step, f"{path}/{step.vote.step.id}", (), queue)


def _add_list(
    index: dict[str, Node], steps: list[Step], prefix: str, last: tuple[str, ...],
    queue: str | None,
) -> None:
    for i, step in enumerate(steps):
        inherited = last if i == len(steps) - 1 else ()
        path = f"{prefix}/{step.id}" if prefix else step.id
        _add(index, step, path, _unique(step.id, *inherited), queue)


def _unique(*ids: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(ids))


@lru_cache(maxsize=256)
def _index(canonical: str) -> dict[str, Node]:
    from legato.spec import pipeline_from_json

    pipeline = pipeline_from_json(canonical)
    index: dict[str, Node] = {}
    _add_list(index, pipeline.steps, "", (), None)
    return index


def index(pipeline: Pipeline) -> dict[str, Node]:
    return _index(pipeline.canonical_json())


def node(pipeline: Pipeline, path: str) -> Node:
    return index(pipeline)[path]
