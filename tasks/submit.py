"""The public tasks for any Celery client, in any language, or Flower's API.

    send_task("legato.submit", kwargs={"pipeline": "summarize", "input": {...}})
    send_task("legato.status", kwargs={"run_id": "..."})

`legato.submit` returns `{"run_id": ...}`; `on_done` (`{"task": ..., "queue": ..., "url": ...}`)
names whom to tell when the run finishes (pipeline/callbacks.py; a URL's host must be in this
worker's LEGATO_WEBHOOK_HOSTS); `tenant` and `priority` kwargs place the run in its tenant's
fair share (legato.admission); `tags` (an object of `key: value` strings, checked as
`legato.tags` says) label it. The pipeline is a *name* in the worker's pipelines directory,
never a file path (producers are less trusted than workers: docs/security.md). In a chain, the
previous task's result becomes the input when no `input` is given
(`chain(fetch.s(), submit.s(pipeline="summarize"))`). A bad pipeline or input fails the task with
SpecError or InputError, and nothing is written. The failure a client sees carries the error's
one line and no traceback: no server path, file content or listing.

`legato.status` returns the run's record as JSON (status, output, error, usage, timings), so a
client needs nothing but Celery to learn how a run ended.

A refusal is the producer's mistake, not the worker's: it is logged as one WARNING line naming
the pipeline (no traceback).
"""

from __future__ import annotations

from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore
from celery.utils.log import get_task_logger

from legato.client import Legato
from legato.errors import InputError, LegatoError
from legato.report import clean
from legato.workers import resources
from legato.workers.app import app

logger = get_task_logger(__name__)  # in the worker's log, with the task's id
_NO_INPUT: Any = object()


class SubmitFailed(LegatoError):
    """legato.submit failed for a reason not the producer's: the worker's log says more."""


def _one_line(text: str, limit: int) -> str:
    """A producer's text fit for one log line: its start, control characters escaped."""
    return clean(text[:limit], newlines=False)


def _legato() -> Legato:
    return resources.client(app)


@app.task(name="legato.submit", bind=True, ignore_result=False)
def submit(self: Task, previous: Any = _NO_INPUT, *, pipeline: str, input: Any = _NO_INPUT,
           idempotency_key: str | None = None, on_done: Any = None,
           tenant: str | None = None, priority: int | None = None,
           tags: Any = None) -> dict[str, str]:
    try:
        if input is _NO_INPUT:
            if previous is _NO_INPUT:
                raise InputError("no input: give `input`, or chain legato.submit after a task "
                                 "whose result is the input")
            input = previous
        run_id = _legato().submit(pipeline, input, idempotency_key=idempotency_key,
                                  names_only=True, on_done=on_done, tenant=tenant,
                                  priority=priority, tags=tags)
    except LegatoError as exc:
        logger.warning("refused a job: run=- pipeline=%s: %s: %s", _one_line(repr(pipeline), 200),
                       type(exc).__name__, _one_line(str(exc), 500))
        _fail(self, exc)
    except Exception as exc:  # the details stay in the worker's log
        logger.exception("legato.submit failed")
        _fail(self, SubmitFailed(f"submit failed on the worker ({type(exc).__name__}); "
                                 f"task id {self.request.id}"))
    return {"run_id": run_id}


@app.task(name="legato.status", bind=True, ignore_result=False)
def status(self: Task, *, run_id: str) -> dict[str, Any]:
    """The run's record, as JSON; RunNotFound for an unknown id."""
    try:
        return _legato().status(run_id).model_dump(mode="json")
    except LegatoError as exc:
        _fail(self, exc)
    except Exception as exc:  # the details stay in the worker's log, as for legato.submit
        logger.exception("legato.status failed")
        _fail(self, SubmitFailed(f"status failed on the worker ({type(exc).__name__}); "
                                 f"task id {self.request.id}"))


def _fail(task: Task, exc: LegatoError) -> NoReturn:
    """Store the failure without Celery's traceback (server paths) and stop the task there."""
    task.backend.mark_as_failure(task.request.id, exc, traceback=None, request=task.request)
    raise Ignore()
