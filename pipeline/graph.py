"""A pipeline's steps indexed by static path, with what each reads and publishes.

Paths are step ids joined by `/` from the top (`triage/billing/reply`). Fan-out instances add an
index (`vote_step[3]`). A node *publishes* its output under its own id and under the ids of the
composites whose output it is (the last step of a chain, a route's branches), so templates read any
step's output by id without knowing the shape of the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from legato import templates, tree
from legato.spec import Pipeline, Step, pipeline_from_json


@dataclass(frozen=True)
class Node:
    path: str
    step: Step
    publishes: tuple[str, ...]
    reads: tuple[str, ...]
    queue: str | None  # its own queue, else the nearest enclosing step's


@lru_cache(maxsize=256)
def _index(canonical: str) -> dict[str, Node]:
    index: dict[str, Node] = {}
    for visit in tree.walk(pipeline_from_json(canonical).steps):
        reads: set[str] = set()
        for _, text, is_expr in tree.templates(visit.step):
            reads |= templates.referenced_outputs(text, expression=is_expr)
        index[visit.path] = Node(visit.path, visit.step, visit.publishes, tuple(sorted(reads)),
                                 visit.queue)
    return index


def index(pipeline: Pipeline) -> dict[str, Node]:
    return _index(pipeline.canonical_json())


def node(pipeline: Pipeline, path: str) -> Node:
    return index(pipeline)[path]
