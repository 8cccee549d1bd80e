"""Finding runs: by pipeline, state, tenant, priority, tags, creation time, text in their input,
output or error, and the schedule that made them.

    find_runs(store, RunQuery(tags={"team": "billing"}, text="refund", limit=20))

Runs are read newest first from the runs index (a sorted set by creation time, so a time range
costs nothing), a page of records at a round trip, each matched against the query as stored —
no index per field to keep in step with retention. A query reads at most `scan` records
(default 10,000): `RunPage.complete` says whether it saw every run in its time range, and
`next_until` continues from where a full page stopped.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from legato.envelope import RUN_STATUSES, RunRecord
from legato.errors import InputError
from legato.store import RunStore, run_from_hash
from legato.tags import check_tags, matches
from legato.tenants import DEFAULT_TENANT

MAX_LIMIT = 10_000
DEFAULT_SCAN = 10_000


class RunQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: str | None = None
    status: str | None = None
    tenant: str | None = Field(default=None, max_length=64, description="this tenant's runs")
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    tags: dict[str, str] = Field(default_factory=dict)
    since: float | None = Field(default=None, description="created at or after (Unix s)")
    until: float | None = Field(default=None, description="created before (Unix s)")
    text: str | None = Field(default=None, max_length=200,
                             description="in the input, output or error; any case")
    schedule: str | None = Field(default=None, max_length=200,
                                 description="made by this schedule (schedules.yaml)")
    limit: int = Field(default=20, ge=1, le=MAX_LIMIT)
    scan: int = Field(default=DEFAULT_SCAN, ge=1, le=1_000_000,
                      description="run records read at most")

    @field_validator("status")
    @classmethod
    def _status(cls, value: str | None) -> str | None:
        if value is not None and value not in RUN_STATUSES:
            raise ValueError(f"no run state {value!r}: one of {', '.join(sorted(RUN_STATUSES))}")
        return value

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> dict[str, str]:
        try:
            return check_tags(value)
        except InputError as exc:
            raise ValueError(str(exc)) from None

    @classmethod
    def checked(cls, **fields: Any) -> RunQuery:
        """A query from outside (a request's fields): InputError naming the first bad one."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            message = str(first["msg"]).removeprefix("Value error, ")
            if message.startswith("tags"):
                raise InputError(message) from None
            raise InputError(f"{'.'.join(map(str, first['loc']))}: {message}") from None


class RunPage(BaseModel):
    runs: list[RunRecord]
    scanned: int = Field(description="run records read")
    complete: bool = Field(description="every run in the time range was looked at")
    next_until: float | None = Field(default=None,
                                     description="`until` for the next page, if any")


def _matches(raw: dict[str, str], q: RunQuery, needle: str | None) -> bool:
    if not raw or "id" not in raw:  # gone, or fields a late writer left after it expired
        return False
    if q.status is not None and raw.get("status") != q.status:
        return False
    if q.pipeline is not None and raw.get("pipeline") != q.pipeline:
        return False
    if q.schedule is not None and raw.get("schedule") != q.schedule:
        return False
    if q.tenant is not None and (raw.get("tenant") or DEFAULT_TENANT) != q.tenant:
        return False
    if q.priority is not None and int(raw.get("priority") or 0) != q.priority:
        return False
    if q.tags and not matches(json.loads(raw.get("tags") or "{}"), q.tags):
        return False
    if needle is not None:
        haystack = "\n".join(raw.get(f, "") for f in ("input", "output", "error"))
        return needle in haystack.casefold()
    return True


def find_runs(store: RunStore, query: RunQuery) -> RunPage:
    # Until "now" (not +inf), so runs made while a query pages do not shift its pages.
    high = f"({query.until!r}" if query.until is not None else repr(time.time() + 1)
    low = repr(query.since) if query.since is not None else "-inf"
    needle = query.text.casefold() if query.text else None
    page = min(max(4 * query.limit, 100), 1000)
    found: list[RunRecord] = []
    scanned, last = 0, None
    while scanned < query.scan:
        records = store.runs_by_time(high, low, start=scanned,
                                     num=min(page, query.scan - scanned))
        if not records:
            return RunPage(runs=found, scanned=scanned, complete=True)
        for raw, created in records:
            scanned, last = scanned + 1, created
            if _matches(raw, query, needle):
                found.append(run_from_hash(raw))
                if len(found) == query.limit:
                    return RunPage(runs=found, scanned=scanned, complete=False, next_until=last)
    more = bool(store.runs_by_time(high, low, start=scanned, num=1))
    return RunPage(runs=found, scanned=scanned, complete=not more,
                   next_until=last if more else None)
