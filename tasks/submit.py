"""`legato.submit`: the public entry for any Celery client, in any language, or Flower's API.

    send_task("legato.submit", kwargs={"pipeline": "summarize", "input": {...}})

Returns `{"run_id": ...}`. The pipeline is a *name* in the worker's pipelines directory, never a
file path (producers are less trusted than workers: docs/security.md). A bad pipeline or input
fails the task with SpecError or InputError, and nothing is written. The failure a client sees
carries the error's one line and no traceback: no server path, file content or listing.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore

from legato.client import Legato
from legato.errors import LegatoError
from legato.workers.app import app

logger = logging.getLogger(__name__)
_client: Legato | None = None


class SubmitFailed(LegatoError):
    """legato.submit failed for a reason not the producer's: the worker's log says more."""


@app.task(name="legato.submit", bind=True, ignore_result=False)
def submit(self: Task, *, pipeline: str, input: Any,
           idempotency_key: str | None = None) -> dict[str, str]:
    global _client
    if _client is None:
        _client = Legato(app=app)
    try:
        run_id = _client.submit(pipeline, input, idempotency_key=idempotency_key,
                                names_only=True)
    except LegatoError as exc:
        _fail(self, exc)
    except Exception as exc:  # noqa: BLE001 - the details stay in the worker's log
        logger.exception("legato.submit failed")
        _fail(self, SubmitFailed(f"submit failed on the worker ({type(exc).__name__}); "
                                 f"task id {self.request.id}"))
    return {"run_id": run_id}


def _fail(task: Task, exc: LegatoError) -> NoReturn:
    """Store the failure without Celery's traceback (server paths) and stop the task there."""
    task.backend.mark_as_failure(task.request.id, exc, traceback=None, request=task.request)
    raise Ignore()
