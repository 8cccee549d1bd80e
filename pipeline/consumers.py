"""Which queues have a live consumer (workers advertise theirs: `RunStore.advertise`), as this
process last read it — cached per queue for CACHE_SECONDS, so checking every message sent costs
no round trip per message."""

from __future__ import annotations

import threading
import time
from typing import Any

from celery.canvas import _chain

from legato.store import RunStore

CACHE_SECONDS = 2.0


class QueueWatch:
    """Which queues have a live consumer, as this process last read it (per queue, for
    CACHE_SECONDS)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._seen: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def served(self, queue: str) -> bool:
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(queue)
        if seen is not None and now - seen[0] < CACHE_SECONDS:
            return seen[1]
        served = self.store.served([queue], now=time.time())[queue]
        with self._lock:
            self._seen[queue] = (now, served)
        return served

    def note(self, run_id: str, queues: set[str]) -> list[str]:
        """Mark the run waiting on the first of `queues` that no live worker serves; returns
        the unserved ones."""
        unserved = sorted(q for q in queues if not self.served(q))
        if unserved:
            self.store.mark_waiting(run_id, unserved[0], since=time.time())
        return unserved


def first_queues(canvas: Any) -> set[str]:
    """The queues the first tasks of a run's canvas go to (a chain's first member; every
    member of a group or a chord's header)."""
    if isinstance(canvas, _chain):
        return first_queues(canvas.tasks[0]) if canvas.tasks else set()
    members = getattr(canvas, "tasks", None)
    if members:
        return set().union(*(first_queues(m) for m in members))
    queue = canvas.options.get("queue")
    return {queue} if queue else set()
