"""A run as a waterfall (rich): one row per journaled step, in tree order, with its queue, worker,
start offset, duration, tokens, route decision or error, and a bar placed on the run's timeline.

    legato show RUN_ID
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text

from legato.envelope import RunRecord, StepRecord
from legato.report import STATUS_STYLE, status_text, tree_order

BAR_WIDTH = 32


@dataclass(frozen=True)
class Span:
    """A step placed on the run's timeline (seconds from the run's start)."""

    record: StepRecord
    depth: int
    start: float
    end: float

    @property
    def took(self) -> float:
        return max(0.0, self.end - self.start)


def timeline(run: RunRecord, steps: list[StepRecord], now: float | None = None
             ) -> tuple[list[Span], float]:
    """The steps in tree order as spans, and the timeline's total length in seconds."""
    origin = run.started_at or run.created_at
    starts = [s.started_at for s in steps if s.started_at]
    if starts:
        origin = min(origin, *starts)
    fallback_end = run.finished_at or now or max(
        [s.ended_at or s.started_at or origin for s in steps] + [origin])
    spans = []
    for s in tree_order(steps):
        start = (s.started_at or origin) - origin
        end = (s.ended_at or fallback_end) - origin
        spans.append(Span(s, s.path.count("/"), start, max(start, end)))
    total = max([sp.end for sp in spans] + [(run.finished_at or origin) - origin, 1e-6])
    return spans, total


def decision(record: StepRecord) -> str:
    """What a step decided or produced, in a few words: a route's branch, a vote, an error."""
    if record.error:
        return record.error
    if record.kind == "route" and isinstance(record.output, dict):
        by = record.detail.get("by", "")
        unmatched = record.detail.get("unmatched")
        note = f" (chose {unmatched!r}: default)" if unmatched is not None else ""
        return f"→ {record.output.get('branch')}" + (f" by {by}" if by else "") + note
    if "votes" in record.detail:
        return f"majority {record.detail['votes']} of {record.detail.get('of')}"
    if record.kind == "plan" and isinstance(record.output, dict):
        return f"{len(record.output.get('subtasks') or [])} subtasks"
    return preview(record.output)


def preview(value: Any, width: int = 60) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _bar(span: Span, total: float, width: int = BAR_WIDTH) -> Text:
    left = int(span.start / total * width)
    length = max(1, round(span.took / total * width))
    left = min(left, width - 1)
    length = min(length, width - left)
    style = STATUS_STYLE.get(span.record.status, "")
    return Text.assemble(" " * left, ("█" * length, style), " " * (width - left - length))


def waterfall(run: RunRecord, steps: list[StepRecord], now: float | None = None) -> Table:
    spans, total = timeline(run, steps, now)
    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    for column in ("step", "kind", "status", "queue", "worker", "start", "took", "tokens"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    table.add_column(f"timeline (0 – {total:.2f}s)", no_wrap=True)
    table.add_column("decision / output / error", overflow="fold")
    for sp in spans:
        s = sp.record
        name = "  " * sp.depth + s.path.rsplit("/", 1)[-1]
        tokens = f"{s.usage.prompt_tokens}+{s.usage.completion_tokens}" if s.usage.calls else ""
        if s.usage.cost:
            tokens += f" ({s.usage.cost:.4g})"
        table.add_row(
            name, s.kind, status_text(s.status), s.queue or "",
            (s.worker or "")[:28], f"+{sp.start:.2f}s", f"{sp.took:.2f}s", tokens,
            _bar(sp, total), Text(decision(s), style="red" if s.error else ""),
        )
    return table
