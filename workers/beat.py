"""Celery beat with Legato's schedules (pipeline/schedules.py) as its schedule source.

    legato beat        # celery -A legato.workers.app beat -S legato.workers.beat:Scheduler

The entries are read from schedules.yaml (checked whole first: a bad file stops beat before
anything fires) instead of `beat_schedule`. A due entry is not a task sent: the beat process fires
the schedule's tick itself (`schedules.fire`: claim the tick in Redis, apply the overlap policy,
submit the run through the producer API, input checked). Nothing is kept in beat's local
schedule file: ticks are absolute and claims live in Redis, so a restarted beat, or a second one
started by mistake, never fires a tick twice.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from celery import beat
from celery.schedules import BaseSchedule, schedstate

from legato import schedules
from legato.client import Legato
from legato.schedules import Schedule
from legato.settings import get_settings

log = logging.getLogger("legato.beat")
IDLE_CHECK = 300.0  # seconds between checks of a schedule with no tick ahead


class Clock(BaseSchedule):
    """A Legato schedule as beat sees it: due when a tick has come that is later than the
    entry's last run (beat's bookkeeping: when it last fired, or started) and than the last tick
    this process fired (ours: a beat slowed down between finding the entry due and firing it
    fires a later tick than the one that made it due, and must not fire that one again); the
    next check at the following tick."""

    def __init__(self, entry: Schedule, app: Any) -> None:
        super().__init__(app=app)
        self.entry = entry
        self.fired: datetime | None = None  # the last tick this process fired

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        now = self.now()
        following = self.entry.following(now)
        return (following - now) if following else timedelta(seconds=IDLE_CHECK)

    def is_due(self, last_run_at: datetime) -> schedstate:
        now = self.now()
        tick = self.entry.latest(now)
        due = tick is not None and tick.timestamp() > last_run_at.timestamp() and (
            self.fired is None or tick > self.fired)
        wait = max(0.0, self.remaining_estimate(last_run_at).total_seconds())
        return schedstate(due, wait)

    def __repr__(self) -> str:
        return f"<legato {self.entry.clock}>"


class Scheduler(beat.Scheduler):
    """Beat's scheduler, its entries Legato's schedules, firing them itself."""

    legato: Legato

    def setup_schedule(self) -> None:
        settings = getattr(self.app, "settings", None) or get_settings()
        self.legato = Legato(settings, app=self.app)
        found = schedules.load_for(self.legato)  # SpecError: beat stops, nothing fired
        self.data = {s.name: self.Entry(name=s.name, task="legato.schedule", app=self.app,
                                        schedule=Clock(s, self.app)) for s in found}
        log.info("legato beat: %d schedule%s from %s: %s", len(found),
                 "" if len(found) == 1 else "s", settings.schedules_path,
                 ", ".join(f"{s.name} ({s.clock})" for s in found) or "none")

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        """Fire the entry's schedule (beat calls this for a due entry); never raises."""
        try:
            self.apply_async(entry)
        except Exception:  # Redis away for a moment, say: the next tick tries again
            log.exception("schedule %s: could not fire", entry.name)

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True,
                    **_: Any) -> None:
        clock: Clock = entry.schedule
        schedule, tick = clock.entry, clock.entry.latest(self.app.now())
        if tick is None or (clock.fired is not None and tick <= clock.fired):
            return
        clock.fired = tick
        with _stops_deferred():
            firing = schedules.fire(self.legato, schedule, tick)
        if firing.what == "submitted":
            log.info("schedule %s tick %s: submitted run %s", schedule.name, firing.tick,
                     firing.run_id)
        elif firing.what == "taken":
            log.info("schedule %s tick %s: taken by another beat", schedule.name, firing.tick)
        elif firing.what == "skipped":
            log.info("schedule %s tick %s: skipped, its previous run %s is unfinished "
                     "(overlap: skip)", schedule.name, firing.tick, firing.run_id)
        else:
            log.error("schedule %s tick %s: not submitted: %s", schedule.name, firing.tick,
                      firing.error)

    def sync(self) -> None:
        """Nothing to write: the state is in Redis."""


@contextmanager
def _stops_deferred() -> Iterator[None]:
    """A stop (SIGTERM, SIGINT: beat raises SystemExit from its handler) waits for the firing in
    progress: a run recorded but never sent would wait for the stall recovery to send it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
