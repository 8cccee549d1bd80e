"""What a step kind is: one subclass of `Kind` per kind, registered in `legato.kinds`.

A kind says, for a step of its spec class: which steps it holds (`children`), which templates,
output schemas, model aliases, tools and child pipelines it names (the loader checks them; the
graph reads what its templates read), and how it compiles to a Celery canvas. What its tasks
*do* is plain Python in the same module; the task base (legato.tasks.base) journals it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from legato.envelope import StepResult
from legato.errors import StepError
from legato.fields import StepBase

if TYPE_CHECKING:
    from celery.canvas import Signature

    from legato.compile import Compiler

Publishes = Literal["own", "inherit", "none"]


@dataclass(frozen=True)
class Child:
    """A step inside another. `where`: its place in the file relative to the parent
    (`steps[0]`, `branches.billing`); `publishes`: under which ids its output is known — its own
    id, its own id and the parent's (the last step of a chain, a route's branch), or none (a
    vote's member, whose outputs only feed the fan-in)."""

    where: str
    step: Any  # a Step (the union is built from the registry)
    publishes: Publishes = "own"


class Kind:
    name: ClassVar[str]
    spec: ClassVar[type[StepBase]]
    # A composite with no output of its own (its last step or its branch publishes for it).
    passes_output: ClassVar[bool] = False

    def children(self, step: Any) -> Iterator[Child]:
        return iter(())

    def templates(self, step: Any) -> Iterator[tuple[str, str, bool]]:
        """(field, template text, is an expression) for every template the step itself holds,
        besides its gate (every kind has one)."""
        return iter(())

    def schemas(self, step: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        """(field, JSON schema) for every output schema the user wrote."""
        return iter(())

    def aliases(self, step: Any) -> Iterator[tuple[str, str]]:
        """(field, model alias) for every model the step calls."""
        return iter(())

    def tools(self, step: Any) -> Iterator[tuple[str, str]]:
        """(field, tool name) for every registered tool the step uses."""
        return iter(())

    def pipelines(self, step: Any) -> Iterator[tuple[str, str]]:
        """(field, pipeline name) for every child pipeline the step runs."""
        return iter(())

    def compile(self, step: Any, path: str, queue: str | None, compiler: Compiler) -> Signature:
        raise NotImplementedError(f"no canvas for step kind {self.name}")


def call_templates(call: Any, field: str) -> Iterator[tuple[str, str, bool]]:
    """The prompt and system templates of a model call (or anything with `prompt` and `system`)
    held under `field` ("" for the step itself)."""
    for name in ("prompt", "system"):
        if text := getattr(call, name, None):
            yield (f"{field}.{name}" if field else name), text, False


def fan_in(results: list[StepResult], *, on_failure: str, min_success: int | None
           ) -> tuple[list[StepResult], list[StepResult]]:
    """Split a fan-out's results into (kept, failed) under its policy; raise if it fails."""
    kept = [r for r in results if r.ok]
    failed = [r for r in results if r.status == "failed"]  # skipped voters count for neither
    if on_failure == "fail" and failed:
        first = failed[0]
        raise StepError(f"{len(failed)} of {len(results)} branches failed; first, "
                        f"{first.path}: {first.error}")
    needed = min_success or 1
    if len(kept) < needed:
        reasons = "; ".join(f"{r.path}: {r.error}" for r in failed[:3])
        raise StepError(f"only {len(kept)} of {len(results)} branches succeeded, "
                        f"{needed} needed ({reasons})")
    return kept, failed
