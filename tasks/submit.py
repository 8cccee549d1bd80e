"""The public tasks for any Celery client, in any language, or Flower's API.

    send_task("legato.submit", kwargs={"pipeline": "summarize", "input": {...}})
    send_task("legato.status", kwargs={"run_id": "..."})

`legato.submit` returns `{"run_id": ...}`. A bad pipeline or input fails the task with SpecError or
InputError, and nothing is written. In a chain, the previous task's result becomes the input when
no `input` is given (`chain(fetch.s(), submit.s(pipeline="summarize"))`).
`legato.status` returns the run's record as JSON (status, output, error, usage, timings), so a
client needs nothing but Celery to learn how a run ended.
"""

from __future__ import annotations

from typing import Any

from legato.client import Legato
from legato.errors import InputError
from legato.workers.app import app

_client: Legato | None = None
_NO_INPUT = object()


def _legato() -> Legato:
    global _client
    if _client is None:
        _client = Legato(app=app)
    return _client


@app.task(name="legato.submit", ignore_result=False)
def submit(previous: Any = _NO_INPUT, *, pipeline: str, input: Any = _NO_INPUT,
           idempotency_key: str | None = None) -> dict[str, str]:
    if input is _NO_INPUT:
        if previous is _NO_INPUT:
            raise InputError("no input: give `input`, or chain legato.submit after a task "
                             "whose result is the input")
        input = previous
    return {"run_id": _legato().submit(pipeline, input, idempotency_key=idempotency_key)}


@app.task(name="legato.status", ignore_result=False)
def status(*, run_id: str) -> dict[str, Any]:
    """The run's record, as JSON; RunNotFound for an unknown id."""
    return _legato().status(run_id).model_dump(mode="json")
