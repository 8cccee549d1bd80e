"""Schedules: pipelines run on a cron expression or an interval, with a fixed input.

Declared in `schedules.yaml` beside the pipelines (LEGATO_SCHEDULES_FILE to put it elsewhere):

    schedules:
      nightly_digest:
        pipeline: summarize
        cron: "0 3 * * *"          # minute hour day-of-month month day-of-week, in UTC
        input: {text: "..."}
        overlap: skip              # skip (default): not while its previous run is unfinished
      heartbeat:                   # allow: whatever the previous run is doing
        pipeline: summarize
        every: 30s                 # 45, 30s, 5m, 2h, 1d: ticks at whole multiples since the epoch
        input: {text: "..."}
        on_done: {url: "https://hooks.example.com/legato"}   # as submit's (callbacks.py)

`load_schedules` checks the whole file before anything fires: the fields, the cron expression or
interval, that the pipeline loads, that the input matches its schema, the callbacks; an error is
a SpecError naming the file and the path (`schedules.nightly_digest.cron`).

Ticks are absolute — the same instants for every process that computes them — so two beats
(`legato beat`, workers/beat.py) agree on which tick is due, and `fire` lets one of them have it:
a `SET NX` on (schedule, tick) with a TTL. The claimant then applies the overlap policy and
submits the run, with the idempotency key `schedule:<name>:<tick>` and the schedule's name on the
run record (`legato runs --schedule NAME`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Literal

from celery.schedules import crontab
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from legato import callbacks
from legato.client import Legato, check_input
from legato.envelope import TERMINAL, OnDone
from legato.errors import InputError, LegatoError, RunNotFound, SpecError
from legato.loader import PIPELINE_NAME, read_yaml
from legato.spec import Pipeline
from legato.store import RunStore

log = logging.getLogger("legato.schedules")

SCHEDULE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}")
TICK_TTL = 600  # seconds a claimed tick is remembered: far beyond two beats' disagreement
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_CRON_STEPS = 20_000  # a cron whose last tick is further back than this is "never"


# -- when --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Every:
    """Every `seconds`, at whole multiples of it since the epoch (UTC)."""

    seconds: int

    def latest(self, now: datetime) -> datetime:
        stamp = math.floor(now.timestamp() / self.seconds) * self.seconds
        return datetime.fromtimestamp(stamp, UTC)

    def following(self, now: datetime) -> datetime:
        return self.latest(now) + timedelta(seconds=self.seconds)

    def __str__(self) -> str:
        return f"every {self.seconds}s"


@dataclass(frozen=True)
class Cron:
    """A five-field cron expression (minute hour day-of-month month day-of-week), in UTC, as
    Celery's `crontab` reads each field (so `*/15`, `1-5`, `mon-fri`, `jan` work), its days
    matched as crontab does: the day of the month and the day of the week both."""

    expression: str
    spec: crontab

    @classmethod
    def parse(cls, expression: str) -> Cron:
        fields = expression.split()
        if len(fields) != 5:
            raise ValueError(f"{expression!r} is not five fields (minute hour day-of-month "
                             f"month day-of-week)")
        minute, hour, day_of_month, month, day_of_week = fields
        try:
            spec = crontab(minute=minute, hour=hour, day_of_month=day_of_month,
                           month_of_year=month, day_of_week=day_of_week)
        except Exception as exc:  # crontab raises ValueError, and some others
            raise ValueError(f"{expression!r} is not a cron expression: {exc}") from None
        return cls(expression, spec)

    def matches(self, t: datetime) -> bool:
        s = self.spec
        return (t.month in s.month_of_year and t.day in s.day_of_month
                and (t.isoweekday() % 7) in s.day_of_week and t.hour in s.hour
                and t.minute in s.minute)

    def latest(self, now: datetime) -> datetime | None:
        """The last minute at or before `now` the expression matches (None: none for years)."""
        s, t = self.spec, now.astimezone(UTC).replace(second=0, microsecond=0)
        for _ in range(_MAX_CRON_STEPS):  # back a month, a day, an hour or a minute at a time
            if t.month not in s.month_of_year:
                t = t.replace(day=1, hour=23, minute=59) - timedelta(days=1)
            elif t.day not in s.day_of_month or (t.isoweekday() % 7) not in s.day_of_week:
                t = t.replace(hour=23, minute=59) - timedelta(days=1)
            elif t.hour not in s.hour:
                t = t.replace(minute=59) - timedelta(hours=1)
            elif t.minute not in s.minute:
                t -= timedelta(minutes=1)
            else:
                return t
        return None

    def following(self, now: datetime) -> datetime | None:
        """The first minute after `now` the expression matches (None: none for years)."""
        s = self.spec
        t = now.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        for _ in range(_MAX_CRON_STEPS):  # on a month, a day, an hour or a minute at a time
            if t.month not in s.month_of_year:
                t = (t.replace(day=28) + timedelta(days=4)).replace(day=1, hour=0, minute=0)
            elif t.day not in s.day_of_month or (t.isoweekday() % 7) not in s.day_of_week:
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif t.hour not in s.hour:
                t = t.replace(minute=0) + timedelta(hours=1)
            elif t.minute not in s.minute:
                t += timedelta(minutes=1)
            else:
                return t
        return None

    def __str__(self) -> str:
        return f"cron {self.expression}"


def _seconds(value: Any) -> int:
    """`45`, `"30s"`, `"5m"`, `"2h"`, `"1d"` -> whole seconds, at least 1."""
    if isinstance(value, bool):
        raise ValueError("expected seconds, or a number with s, m, h or d (30s, 5m)")
    if isinstance(value, int | float):
        number, unit = float(value), "s"
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        number_text, unit = (text[:-1], text[-1]) if text[-1] in _UNITS else (text, "s")
        try:
            number = float(number_text)
        except ValueError:
            raise ValueError(f"{value!r} is not seconds, nor a number with s, m, h or d "
                             f"(30s, 5m)") from None
    else:
        raise ValueError("expected seconds, or a number with s, m, h or d (30s, 5m)")
    seconds = number * _UNITS[unit]
    if not math.isfinite(seconds) or seconds < 1 or seconds != int(seconds):
        raise ValueError(f"{value!r}: a whole number of seconds, at least 1")
    return int(seconds)


# -- what --------------------------------------------------------------------------------------


class Schedule(BaseModel):
    """One entry of schedules.yaml (its `name` is its key there)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    pipeline: str
    cron: str | None = None
    every: int | None = None
    input: Any = Field(default_factory=dict)
    overlap: Literal["skip", "allow"] = "skip"
    on_done: OnDone | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SCHEDULE_NAME.fullmatch(value):
            raise ValueError("a schedule's name is letters, digits, _ and - (at most 100)")
        return value

    @field_validator("pipeline")
    @classmethod
    def _pipeline(cls, value: str) -> str:
        if not PIPELINE_NAME.fullmatch(value):
            raise ValueError("a pipeline's name (a file in the pipelines directory), not a path")
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            Cron.parse(value)
        return value

    @field_validator("every", mode="before")
    @classmethod
    def _every(cls, value: Any) -> int | None:
        return None if value is None else _seconds(value)

    @model_validator(mode="after")
    def _one_clock(self) -> Schedule:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of `cron` and `every`")
        return self

    @cached_property
    def clock(self) -> Every | Cron:
        return Cron.parse(self.cron) if self.cron is not None else Every(int(self.every or 1))

    def latest(self, now: datetime) -> datetime | None:
        return self.clock.latest(now)

    def following(self, now: datetime) -> datetime | None:
        return self.clock.following(now)


def tick_stamp(tick: datetime) -> str:
    """A tick as the same text in every process: `2026-12-01T03:00:00Z`."""
    return tick.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_schedules(path: Path, *, load: Callable[[str], Pipeline],
                   check: Callable[[Pipeline, Any], None],
                   hosts: tuple[str, ...] = ()) -> list[Schedule]:
    """Read and check every schedule of `path`; SpecError names the file and the path."""
    source = str(path)
    if not path.is_file():
        raise SpecError("no schedules file here (put schedules.yaml beside the pipelines, or "
                        "set LEGATO_SCHEDULES_FILE)", source=source)
    data = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("schedules"), dict):
        raise SpecError("expected a mapping with a `schedules:` mapping", source=source)
    unknown = sorted(str(k) for k in data if k != "schedules")
    if unknown:
        raise SpecError("unknown field", source=source, path=unknown[0])
    schedules = []
    for name, raw in data["schedules"].items():
        where = f"schedules.{name}"
        if not isinstance(raw, dict):
            raise SpecError("expected a mapping (pipeline, cron or every, input, overlap)",
                            source=source, path=where)
        try:
            entry = Schedule.model_validate({**raw, "name": str(name)})
        except ValidationError as exc:
            raise _field_error(exc, source, where) from None
        try:
            pipeline = load(entry.pipeline)
        except SpecError as exc:
            raise SpecError(f"pipeline {entry.pipeline!r} does not load: {exc}", source=source,
                            path=f"{where}.pipeline") from None
        try:
            check(pipeline, entry.input)
        except InputError as exc:
            raise SpecError(str(exc), source=source, path=f"{where}.input") from None
        try:
            callbacks.check_on_done(entry.on_done, hosts=hosts)
        except InputError as exc:
            raise SpecError(str(exc), source=source, path=where) from None
        schedules.append(entry)
    return schedules


def load_for(legato: Legato) -> list[Schedule]:
    """The schedules of `legato`'s settings (LEGATO_SCHEDULES_FILE, else schedules.yaml beside
    the pipelines), checked against its pipelines, models and webhook hosts."""
    settings = legato.settings
    return load_schedules(settings.schedules_path, load=legato.load,
                          check=partial(check_input, max_bytes=settings.max_input_bytes),
                          hosts=settings.webhook_hosts)


def _field_error(exc: ValidationError, source: str, where: str) -> SpecError:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if p != "name")
    reason = {"missing": "required field is missing",
              "extra_forbidden": "unknown field"}.get(first["type"], first["msg"])
    return SpecError(reason.removeprefix("Value error, "), source=source,
                     path=f"{where}.{loc}" if loc else where)


# -- firing ------------------------------------------------------------------------------------


Fired = Literal["submitted", "taken", "skipped", "failed"]


@dataclass(frozen=True)
class Firing:
    """What one beat did with one tick: `submitted` (the run's id), `taken` (another beat had
    it), `skipped` (overlap: the previous run is unfinished; its id), `failed` (the error)."""

    what: Fired
    tick: str
    run_id: str | None = None
    error: str | None = None


def fire(legato: Legato, entry: Schedule, tick: datetime) -> Firing:
    """Fire `entry`'s `tick` once across every beat: claim it, apply the overlap policy, submit."""
    store, stamp, name = legato.store, tick_stamp(tick), entry.name
    if not store.claim_tick(name, stamp, ttl=TICK_TTL):
        return Firing("taken", stamp)
    if entry.overlap == "skip":
        previous = store.schedule_state(name).get("last_run")
        if previous and _unfinished(store, previous):
            store.note_tick(name, "skipped", last_skipped=stamp)
            return Firing("skipped", stamp, run_id=previous)
    try:
        run_id = legato.submit(entry.pipeline, entry.input,
                               idempotency_key=f"schedule:{name}:{stamp}",
                               on_done=entry.on_done, schedule=name)
    except LegatoError as exc:  # the pipeline changed on disk since the file was checked, say
        store.note_tick(name, "failed", last_error=f"{stamp}: {exc}")
        return Firing("failed", stamp, error=str(exc))
    store.note_tick(name, "fired", last_run=run_id, last_tick=stamp)
    return Firing("submitted", stamp, run_id=run_id)


def _unfinished(store: RunStore, run_id: str) -> bool:
    try:
        return store.get_run(run_id).status not in TERMINAL
    except RunNotFound:  # expired: nothing is running
        return False
