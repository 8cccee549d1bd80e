"""A run as a waterfall (rich): one row per journaled step, in tree order, with its queue, worker,
start offset, duration, tokens, route decision or error, and a bar placed on the run's timeline.

    legato show RUN_ID

Fitted to the width it is rendered at: one table row a step when wide (WIDE columns or more),
else two lines a step (name, status, timings and bar; then kind, queue, worker, tokens and what
it decided), which reads at 80 columns and in a pipe. Names, queues and workers are never cut;
all text is data (never markup, control characters escaped).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from legato.envelope import RunRecord, StepRecord
from legato.report import STATUS_STYLE, clean, status_text, tree_order

BAR_WIDTH = 32
WIDE = 160


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
    if record.status == "waiting":  # parked: what for (an approval names the proposed calls)
        return f"waiting for {record.detail.get('waiting_for') or 'a signal'}"
    if "approval" in record.detail:
        a = record.detail["approval"]
        done = {"approve": "approved", "reject": "rejected", "edit": "edited"}
        return done.get(a.get("decision"), str(a.get("decision"))) + (
            f" by {a['by']}" if a.get("by") else "") + (f": {a['reason']}" if a.get("reason")
                                                         else "")
    return preview(record.output)


def preview(value: Any, width: int = 60) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _bar(span: Span, total: float, width: int = BAR_WIDTH) -> Text:
    left = int(span.start / total * width)
    length = max(1, round(span.took / total * width))
    left = min(left, width - 1)
    length = min(length, width - left)
    style = STATUS_STYLE.get(span.record.status, "")
    return Text.assemble(" " * left, ("█" * length, style), " " * (width - left - length))


def _tokens(s: StepRecord) -> str:
    tokens = f"{s.usage.prompt_tokens}+{s.usage.completion_tokens}" if s.usage.calls else ""
    if s.usage.cost:
        tokens += f" ({s.usage.cost:.4g})"
    return tokens


def _decision(s: StepRecord, width: int) -> str:
    return clean(" ".join(decision(s).split())[: width * 4], newlines=False)[:width]


class Waterfall:
    def __init__(self, run: RunRecord, steps: list[StepRecord], now: float | None = None
                 ) -> None:
        self.spans, self.total = timeline(run, steps, now)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if options.max_width >= WIDE:
            yield self._table()
        else:
            yield from self._lines(options.max_width)

    def _name(self, sp: Span) -> str:
        return clean("  " * sp.depth + sp.record.path.rsplit("/", 1)[-1], newlines=False)

    def _table(self) -> Table:
        table = Table(show_edge=False, header_style="bold", pad_edge=False)
        for column in ("step", "kind", "status", "queue", "worker", "start", "took", "tokens"):
            table.add_column(column, no_wrap=True)
        table.add_column(f"timeline (0 – {self.total:.2f}s)", no_wrap=True)
        table.add_column("decision / output / error", overflow="fold", ratio=1)
        for sp in self.spans:
            s = sp.record
            table.add_row(
                Text(self._name(sp)), Text(clean(s.kind)), status_text(s.status),
                Text(clean(s.queue or "")), Text(clean(s.worker or "")), f"+{sp.start:.2f}s",
                f"{sp.took:.2f}s", _tokens(s), _bar(sp, self.total),
                Text(_decision(s, 200), style="red" if s.error else ""),
            )
        return table

    def _lines(self, width: int) -> RenderResult:
        """Two lines a step: `name  status  +start  took  bar`, then the details, indented."""
        names = [self._name(sp) for sp in self.spans]
        name_w = min(max([4] + [len(n) for n in names]), max(12, width // 3))
        fixed = name_w + 2 + 9 + 2 + 8 + 1 + 7 + 2  # name, status, start, took and the gaps
        bar_w = min(BAR_WIDTH, width - fixed)
        head = Text(f"{'step':<{name_w}}  {'status':<9}  {'start':>8} {'took':>7}  ",
                    style="bold")
        if bar_w >= 8:
            head.append(f"0 – {self.total:.2f}s"[:bar_w], style="bold")
        yield head
        for sp, name in zip(self.spans, names, strict=True):
            s = sp.record
            if len(name) > name_w:  # a long name gets its own line: never cut
                yield Text(name, overflow="fold")
                name = ""
            line = Text.assemble(f"{name:<{name_w}}  ", status_text(s.status),
                                 " " * max(0, 9 - len(s.status)),
                                 f"  {'+' + format(sp.start, '.2f') + 's':>8} "
                                 f"{format(sp.took, '.2f') + 's':>7}  ")
            if bar_w >= 8:
                line.append_text(_bar(sp, self.total, bar_w))
            yield line
            details = [clean(x, newlines=False) for x in (s.kind, s.queue or "", s.worker or "")
                       if x]
            if tokens := _tokens(s):
                details.append(f"tokens {tokens}")
            said = _decision(s, max(40, width * 2))
            body = Text(" · ".join(details), style="dim")
            if said:
                body.append_text(Text(("  " if details else "") + said,
                                      style="red" if s.error else ""))
            yield Padding(body, (0, 0, 0, 2 + 2 * sp.depth), expand=False)


def waterfall(run: RunRecord, steps: list[StepRecord], now: float | None = None) -> Waterfall:
    return Waterfall(run, steps, now)
