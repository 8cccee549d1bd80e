"""Celery's Redis result backend, minus the producer's result subscriptions.

Stock Celery subscribes a producer to the result channel of every task it sends (and of every
group member), so that `.get()` could wait on it. Legato never waits on Celery results — it
listens for the run's own completion event — so those subscriptions are wasted round trips and
pending results left to clean up at interpreter exit. Chords still work: they count through the
backend's keys, not through these subscriptions.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend


class ResultBackend(RedisBackend):
    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def add_pending_result(self, result: Any, weak: bool = False,
                           start_drainer: bool = True) -> Any:
        return result


def backend_url(redis_url: str) -> str:
    return f"{__name__}:ResultBackend+{redis_url}"
