"""Celery's Redis result backend, minus the producer's result subscriptions.

Stock Celery subscribes a producer to the result channel of every task it sends (and of every
group member), so that `.get()` could wait on it. Legato never waits on Celery results — it
listens for the run's own completion event — so those subscriptions are wasted round trips and
pending results left to clean up at interpreter exit. Here a result is subscribed to only when
someone actually waits on it (`.get()`, `.join()`). Chords still work: they count through the
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
        return result  # subscribed lazily, in _subscribe

    def _subscribe(self, result: Any) -> None:
        for member in getattr(result, "results", None) or [result]:
            super().add_pending_result(member)

    def wait_for_pending(self, result: Any, *args: Any, **kwargs: Any) -> Any:
        self._subscribe(result)
        return super().wait_for_pending(result, *args, **kwargs)

    def iter_native(self, result: Any, *args: Any, **kwargs: Any) -> Any:
        self._subscribe(result)
        return super().iter_native(result, *args, **kwargs)


def backend_url(redis_url: str) -> str:
    return f"{__name__}:ResultBackend+{redis_url}"
