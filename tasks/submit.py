"""`legato.submit`: the public entry for any Celery client, in any language, or Flower's API.

    send_task("legato.submit", kwargs={"pipeline": "summarize", "input": {...}})

Returns `{"run_id": ...}`. A bad pipeline or input fails the task with SpecError or InputError,
and nothing is written.
"""

from __future__ import annotations

from typing import Any

from legato.client import Legato
from legato.workers.app import app

_client: Legato | None = None


@app.task(name="legato.submit", ignore_result=False)
def submit(*, pipeline: str, input: Any, idempotency_key: str | None = None) -> dict[str, str]:
    global _client
    if _client is None:
        _client = Legato(app=app)
    return {"run_id": _client.submit(pipeline, input, idempotency_key=idempotency_key)}
