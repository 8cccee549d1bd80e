"""Steps sent to a queue no live worker serves are never silent.

Workers advertise the queues they consume (their sweeper, every pass: `<p>:consumers:<queue>`).
Every process that publishes a step — a producer, a worker continuing a chain — checks the
queue's consumers as it sends (`note_unserved`, on Celery's `before_task_publish`; the answer is
cached, legato/consumers.py, so it costs no round trip per message; a producer checks what it
sends itself, in `Legato.submit`) and, when there are none, marks
the run "waiting for a worker on queue X since T" at once. A sweeper clears the mark when a worker
turns up, and fails the run after LEGATO_UNSERVED_SECONDS.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from legato.consumers import QueueWatch

log = logging.getLogger("legato.unserved")


def run_of(body: Any) -> str | None:
    """The run a task message belongs to, from its kwargs (protocol 2: args, kwargs, embed)."""
    kwargs = body[1] if isinstance(body, list | tuple) and len(body) > 1 else None
    if not isinstance(kwargs, dict):
        return None
    step = kwargs.get("step")
    steps = kwargs.get("steps")
    if isinstance(steps, list) and steps:
        step = steps[0]
    found = step.get("run_id") if isinstance(step, dict) else kwargs.get("run_id")
    return found if isinstance(found, str) else None


def note_unserved(watch: QueueWatch, body: Any, routing_key: str | None) -> None:
    """Mark the message's run waiting when its queue has no live consumer. Never raises: a
    failed check must not stop a message from being sent."""
    try:
        run_id = run_of(body)
        if run_id is None or not routing_key or watch.served(routing_key):
            return
        if watch.store.mark_waiting(run_id, routing_key, since=time.time()):
            log.warning("run %s: a step was sent to queue %s, which no worker serves",
                        run_id, routing_key)
    except Exception:  # the broker or Redis will say more on their own
        log.debug("could not check the consumers of %s", routing_key, exc_info=True)
