"""`legato.submit`: the public entry for any Celery client, in any language, or Flower's API.

    send_task("legato.submit", kwargs={"pipeline": "summarize", "input": {...}})

Returns `{"run_id": ...}`. A bad pipeline or input fails the task with SpecError or InputError,
and nothing is written. A refusal is the producer's mistake, not the worker's: it is logged as one
WARNING line naming the pipeline (no traceback), and Celery reports it as an expected failure.
"""

from __future__ import annotations

from typing import Any

from celery.utils.log import get_task_logger

from legato.client import Legato
from legato.errors import InputError, SpecError
from legato.workers.app import app

_client: Legato | None = None
log = get_task_logger(__name__)


def _one_line(value: Any, limit: int = 500) -> str:
    """A producer's text fit for one log line: control characters (newlines too) escaped."""
    text = str(value)[:limit]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@app.task(name="legato.submit", ignore_result=False, throws=(SpecError, InputError))
def submit(*, pipeline: str, input: Any, idempotency_key: str | None = None) -> dict[str, str]:
    global _client
    if _client is None:
        _client = Legato(app=app)
    try:
        return {"run_id": _client.submit(pipeline, input, idempotency_key=idempotency_key)}
    except (SpecError, InputError) as exc:
        log.warning("refused a job: run=- pipeline=%s: %s: %s", _one_line(repr(pipeline), 200),
                    type(exc).__name__, _one_line(exc))
        raise
