"""`legato.deliver`: telling a finished run's callbacks how it ended (pipeline/callbacks.py).

Sent when a run with callbacks finishes, and by a sweeper for a run whose holder went quiet.
Each pass tries every target not yet done, records each try on the run, and retries later (a
Celery retry: no thread held while waiting) what failed transiently, holding the run in the
callbacks set meanwhile so a sweeper does not send it again.
"""

from __future__ import annotations

import logging
import time

from celery import Task

from legato import callbacks
from legato.errors import RunNotFound
from legato.workers import resources
from legato.workers.app import app

log = logging.getLogger("legato.callbacks")
HOLD_MARGIN = 5.0  # seconds beyond a POST's timeout that one try may take


@app.task(name="legato.deliver", bind=True, max_retries=None)
def deliver(self: Task, *, run_id: str) -> None:
    store, settings = resources.store(), resources.settings()
    policy = callbacks.Backoff.of(settings)
    try:
        run = store.get_run(run_id)
    except RunNotFound:  # expired or pruned: nobody left to tell about
        store.callbacks_done(run_id)
        return
    if not run.done:  # resumed since: its next finish sends this again
        return
    targets = callbacks.pending(run)
    if targets:
        busy = len(targets) * (settings.webhook_timeout + HOLD_MARGIN) + store.callback_hold
        store.hold_callbacks(run_id, until=time.time() + busy)
    again = []
    for target in targets:
        delivery = callbacks.attempt(run, target, app=self.app, settings=settings,
                                     client=resources.http(), policy=policy)
        if not store.note_delivery(run_id, delivery):
            return  # the run was resumed or has gone meanwhile
        if delivery.ok:
            log.info("run %s: told its %s (delivery %s)", run_id, target, delivery.delivery_id)
        else:
            log.warning("run %s: telling its %s failed: %s", run_id, target, delivery.error)
        if not delivery.final:
            again.append(callbacks.tries(run, target) + 1)
    if not again:
        store.callbacks_done(run_id)
        return
    wait = policy.wait(max(again))
    store.hold_callbacks(run_id, until=time.time() + wait + store.callback_hold)
    raise self.retry(countdown=wait)
