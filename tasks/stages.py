"""A run sent one stage at a time (pipeline/compile.py, `Compiler.stage`).

A stage's last task carries `then: {"at": <index>}`. When it runs, before its body, the next
stage is compiled from the run's pinned spec (cached by the process) into the task's own
continuation, `request.chain` — which Celery sends after the task returns, and which a
`replace()` (a route's branch, a loop's next round, a plan's workers) and the task's stored
signature (the sweeper's redispatch, a parked step's resume) carry along. So a message holds
one stage, not the rest of the run, and a step's cost does not grow with the chain's length.
"""

from __future__ import annotations

import inspect
from typing import Any

from celery import Task, chain

from legato.compile import Compiler
from legato.envelope import StepInput
from legato.errors import PermanentError
from legato.workers import resources
from legato.workers.app import app


def with_then(signature: inspect.Signature) -> inspect.Signature:
    """A step task's signature with the `then` keyword (the poison check binds messages to it)."""
    then = inspect.Parameter("then", inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation="dict[str, int] | None")
    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD),
              len(params))
    return signature.replace(parameters=[*params[:at], then, *params[at:]])


def _envelope(kwargs: dict[str, Any]) -> StepInput:
    found = kwargs.get("step") or (kwargs.get("steps") or [None])[0]
    if found is None:
        raise PermanentError("a task with `then` names no step")
    return found if isinstance(found, StepInput) else StepInput.model_validate(found)


def _index(then: Any) -> int:
    at = then.get("at") if isinstance(then, dict) else None
    if not isinstance(at, int) or isinstance(at, bool) or at < 0:
        raise PermanentError(f"`then` must be {{'at': <stage index>}}, not {then!r}")
    return at


def follow(task: Task, kwargs: dict[str, Any], then: Any) -> None:
    """Make the run's stage `then.at` this task's continuation (unless it already has one: a
    redispatched or resumed copy of it carries the stage it compiled)."""
    task.request.kwargs = {k: v for k, v in (task.request.kwargs or {}).items() if k != "then"}
    if task.request.chain:
        return
    set_stage(task, _envelope(kwargs), _index(then))


def set_stage(task: Task, step: StepInput, at: int) -> None:
    """Put the run's stage `at` in `task`'s continuation, in place of what was there."""
    spec = resources.store().get_spec(step.spec_hash)
    compiler = Compiler(app, step.run_id, step.spec_hash, fuse=spec.fuse,
                        batch_size=resources.settings().batch_size)
    plan = compiler.plan(spec)
    if at >= len(plan):
        raise PermanentError(f"stage {at} of a run of {len(plan)} stages")
    stage = chain(compiler.stage(spec, at))
    tasks, _ = stage.prepare_steps((), {}, stage.tasks, root_id=task.request.root_id,
                                   parent_id=task.request.id, app=app, clone=False)
    task.request.chain = [dict(t) for t in tasks]  # the next task last, as Celery keeps it
