"""What an eval runs on: items of a JSON Lines file, or the inputs of recorded runs.

    {"input": {"text": "..."}, "expected": "..."}     one line each; `expected` is optional

`--from-runs` takes a filter, comma-separated `key=value`: `pipeline=NAME`, `status=succeeded`,
`eval=ID` (the runs of an earlier eval; without it, runs an eval made — tagged `eval=<id>` — are
left out), `tag=KEY:VALUE` (runs tagged so at submit), `since=` / `until=` (ISO time, or seconds
ago: `3600`, `2h`), `limit=N` (default 100). A recorded run's output becomes the item's
`expected` unless `expected=none`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legato.errors import InputError

if TYPE_CHECKING:
    from legato.store import RunStore

_MISSING: Any = object()
_FILTERS = ("pipeline", "status", "eval", "tag", "since", "until", "limit", "expected")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Item:
    input: Any
    expected: Any = _MISSING
    source: str = ""  # where it came from: `file.jsonl:3` or a run id

    @property
    def has_expected(self) -> bool:
        return self.expected is not _MISSING


def load_dataset(path: Path) -> list[Item]:
    """Items of a JSON Lines file (blank lines skipped). Raises InputError naming the line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read dataset {path}: {exc.strerror}") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "input" not in row:
            raise InputError(f"{where}: expected an object with `input` (and `expected`)")
        extra = sorted(set(row) - {"input", "expected"})
        if extra:
            raise InputError(f"{where}: unknown field {extra[0]!r} (fields: input, expected)")
        items.append(Item(row["input"], row.get("expected", _MISSING), where))
    if not items:
        raise InputError(f"dataset {path} has no items")
    return items


def parse_filter(text: str) -> dict[str, str]:
    filters: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in _FILTERS:
            raise InputError(f"--from-runs {text!r}: {part!r} is not one of "
                             f"{', '.join(k + '=...' for k in _FILTERS)}")
        filters[key] = value
    return filters


def _when(key: str, value: str, now: float) -> float:
    try:
        if value[-1:] in _UNITS and value[:-1].replace(".", "", 1).isdigit():
            return now - float(value[:-1]) * _UNITS[value[-1]]
        if value.replace(".", "", 1).isdigit():
            return now - float(value)
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise InputError(f"--from-runs {key}={value!r}: not an ISO time or an age "
                         f"(3600, 2h, 7d)") from None


def from_runs(store: RunStore, text: str, *, now: float | None = None) -> list[Item]:
    """Items from the recorded runs the filter selects, newest first."""
    filters = parse_filter(text)
    now = time.time() if now is None else now
    since = _when("since", filters["since"], now) if "since" in filters else None
    until = _when("until", filters["until"], now) if "until" in filters else None
    try:
        limit = int(filters.get("limit", "100"))
    except ValueError:
        raise InputError(f"--from-runs limit={filters['limit']!r}: not a number") from None
    keep_expected = filters.get("expected", "output") != "none"
    if "eval" in filters:
        ids = store.eval_runs(filters["eval"])
        runs = sorted((store.get_run(i) for i in ids), key=lambda r: -r.created_at)
    else:
        runs = store.list_runs(status=filters.get("status"), limit=max(limit * 20, 1000))
    items = []
    for run in runs:
        if filters.get("pipeline") not in (None, run.pipeline):
            continue
        if filters.get("status") not in (None, run.status):
            continue
        if "eval" not in filters and "eval" in run.tags:  # an earlier eval's run, not a user's
            continue
        if "tag" in filters:
            key, _, value = filters["tag"].partition(":")
            if run.tags.get(key) != value:
                continue
        if (since is not None and run.created_at < since) or \
                (until is not None and run.created_at > until):
            continue
        expected = run.output if keep_expected and run.status == "succeeded" else _MISSING
        items.append(Item(run.input, expected, run.id))
        if len(items) >= limit:
            break
    if not items:
        raise InputError(f"--from-runs {text!r} selects no recorded runs")
    return items
