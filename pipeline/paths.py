"""Step paths, built in one place.

A step's path is the ids from the top joined by `/` (`triage/billing`); a fan-out instance adds
an index (`sentiment/judge[2]`); a composite's own parts are named under it (`brief/plan`,
`brief/worker[0]`, `draft/round[1]`, `helper/turn[3]`). The journal is keyed by path.
"""

from __future__ import annotations


def child(prefix: str, step_id: str) -> str:
    """The path of a step inside `prefix` ("" at the top)."""
    return f"{prefix}/{step_id}" if prefix else step_id


def member(node: str, index: int) -> str:
    """The `index`-th instance of a fanned-out node."""
    return f"{node}[{index}]"


def part(node: str, name: str, index: int | None = None) -> str:
    """A composite's own part: `node/plan`, or the `index`-th of them, `node/round[2]`."""
    return child(node, name if index is None else member(name, index))


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def leaf(path: str) -> str:
    """The last id of a path, without an instance index."""
    return path.rsplit("/", 1)[-1].split("[", 1)[0]


def is_under(path: str, node: str) -> bool:
    return path.startswith(node + "/")
