"""The raw-Celery baseline: a bench-only Celery app with the same broker settings as Legato's.

    celery -A bench.rawapp worker -P threads -c 100 -Q bench.raw

It mirrors `workers/app.py` (JSON only, late acks, prefetch 1, task events on) so the comparison
measures what Legato's engine adds, not a difference in Celery configuration. The result backend
is Celery's stock Redis backend. It uses its own Redis database (`BENCH_RAW_REDIS_URL`), so the
round-trip count can tell its traffic from Legato's.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import httpx
from celery import Celery

from legato.workers.celery_config import WIRE_AND_DELIVERY

QUEUE = "bench.raw"

app = Celery("bench_raw", broker=os.environ.get("BENCH_RAW_REDIS_URL", "redis://127.0.0.1:6379/1"),
             backend=os.environ.get("BENCH_RAW_REDIS_URL", "redis://127.0.0.1:6379/1"))
app.conf.update(
    **WIRE_AND_DELIVERY,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": 3600},
    worker_hijack_root_logger=False,
)

_lock = threading.Lock()
_http: httpx.Client | None = None


def _client() -> httpx.Client:
    """One sync httpx client per process, as Legato's workers have (workers/resources.py)."""
    global _http
    if _http is None:
        with _lock:
            if _http is None:
                limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
                _http = httpx.Client(timeout=60, limits=limits)
    return _http


@app.task(name="bench.noop")
def noop(prev: Any = None) -> float:
    """Does nothing; returns when it finished (the producer reads the last one)."""
    return time.time()


@app.task(name="bench.call")
def call(prev: Any = None, *, url: str, prompt: str = "hello") -> float:
    """One chat completion against the fake model, as sync httpx from a pool thread."""
    body = {"model": "fake", "messages": [{"role": "user", "content": prompt}],
            "temperature": 0, "seed": 0}
    response = _client().post(url, json=body)
    response.raise_for_status()
    response.json()
    return time.time()


@app.task(name="bench.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return time.time()


@app.task(name="bench.join")
def join(results: list[Any]) -> float:
    return time.time()
