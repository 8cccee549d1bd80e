"""Closing a run: succeeded with its output, or failed with the first failure's reason.

Runs as `legato.finalize` after a pipeline's last step, or inside the last step's own task when
that is a segment (compile.py folds it in: one Celery task fewer per run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Task

from legato import callbacks, templates
from legato.admission import send
from legato.envelope import StepResult, TerminalStatus
from legato.lua import Part
from legato.workers import resources
from legato.workers.app import app


@dataclass
class Handoff:
    """A step's end not yet written (`Journal.end_part`): it rides the next step's begin, or
    the run's finish (tasks/base.py, `journal_step`)."""

    parts: list[Part]
    output: Any
    publishes: tuple[str, ...]


def _finish(run_id: str, status: TerminalStatus, *, output: Any = None,
            error: str | None = None, first: list[Part] | None = None) -> dict[str, Any]:
    """Finish the run (`first`: the last step's end, in the same round trip), send its
    completion callbacks if it has any (callbacks.py), and settle its tenant's share
    (admission.py)."""
    if callbacks.finish(resources.store(), app, run_id, status, output=output, error=error,
                        first=first):
        settle(run_id)
    return {"run_id": run_id, "status": status}


def close_run(run_id: str, spec_hash: str, result_wire: Any, *,
              last: Handoff | None = None, also: tuple[Part, ...] = ()) -> dict[str, Any]:
    """Finish the run from the last step's wire result (or an upstream failure it carried).
    `last`: that step's end, not yet written: its output is read from it, and it is written
    with the finish, as are `also`."""
    store = resources.store()
    first = [*(last.parts if last else ()), *also]
    result = StepResult.model_validate(result_wire) if isinstance(result_wire, dict) else None
    if result is None or not result.ok:
        reason = f"{result.path}: {result.error}" if result else "no result reached the end"
        return _finish(run_id, "failed", error=reason, first=first)
    try:
        spec = store.get_spec(spec_hash)
        output: Any
        if spec.output is not None:
            outputs = store.get_outputs(run_id)
            if last is not None:  # what its end will publish
                outputs.update(dict.fromkeys(last.publishes, last.output))
            context = {"input": store.get_run(run_id).input, "outputs": outputs}
            output = templates.render(spec.output, context)
        elif last is not None:
            output = last.output
        else:
            record = store.get_step(run_id, result.path)
            output = record.output if record else None
    except Exception as exc:
        return _finish(run_id, "failed", error=f"output failed: {type(exc).__name__}: {exc}",
                       first=first)
    return _finish(run_id, "succeeded", output=output, first=first)


def settle(run_id: str) -> None:
    """With admission (a tenants file): free the ended run's slot and send the runs that
    releases. Lost if this worker dies here: the sweeper's reconcile does it then."""
    admission = resources.admission()
    if admission is not None:
        send(app, resources.store(), admission.settle(run_id),
             batch_size=resources.settings().batch_size)


@app.task(name="legato.finalize", bind=True)
def finalize(self: Task, last: Any = None, *, run_id: str, spec_hash: str) -> dict[str, Any]:
    return close_run(run_id, spec_hash, last)
