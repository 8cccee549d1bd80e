"""The worker's consumer: Celery's, with every message checked (poison.py) and task events sent
in batches.

Celery's consumer flushes its buffered task events (received, started, succeeded) on the next
pass of its event loop, so a busy worker publishes one `task.multi` per task or two — a Redis
round trip each. Here the first buffered event schedules a flush `EVENT_FLUSH_SECONDS` later, so
the events of every task within that window go in one publish (Flower sees them that much
later). Celery's own buffer limit (24 events) still flushes a full buffer at once.
"""

from __future__ import annotations

import threading
from typing import Any

from legato.workers import poison

EVENT_FLUSH_SECONDS = 0.1


class Consumer(poison.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flush_due = False
        self._flush_lock = threading.Lock()

    def on_send_event_buffered(self) -> None:
        # Called from the pool's threads too: only the hub's own thread touches its timer.
        hub = self.hub
        if hub is None:
            return
        with self._flush_lock:
            if self._flush_due:
                return
            self._flush_due = True
        hub.call_soon(self._schedule_flush)

    def _schedule_flush(self) -> None:
        assert self.hub is not None
        self.hub.call_later(EVENT_FLUSH_SECONDS, self._flush_batch)

    def _flush_batch(self) -> None:
        with self._flush_lock:
            self._flush_due = False  # an event from now on schedules the next flush
        self._flush_events()
