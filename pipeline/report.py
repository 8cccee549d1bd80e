"""Rendering runs for people: a run summary and a list of runs (rich); the step waterfall is
in waterfall.py, the HTML page in html_report.py.

Everything shown is data: user- and model-supplied text (inputs, outputs, errors, pipeline and
step names) goes into `Text` objects, never through rich markup, and `clean` escapes control
characters and terminal escape sequences (ESC becomes the four characters `\x1b`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from legato.envelope import RunRecord, StepRecord

# Every run and step state (envelope.py lists them; a test checks none is missing).
STATUS_STYLE: dict[str, str] = {
    "succeeded": "green", "failed": "red", "running": "yellow", "queued": "cyan",
    "waiting": "blue",
    "cancelled": "magenta", "skipped": "dim"}


# C0 controls but tab and newline, DEL, C1 controls (0x9b is a one-byte CSI), and the Unicode
# format characters that reorder or hide text (bidi overrides and isolates, zero-width marks).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e"
                       "\u2066-\u2069\ufeff]")


def _escape_control(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: str, *, newlines: bool = True) -> str:
    """`text` safe for a terminal: control characters and escape sequences as visible escapes
    (`\x1b[31m` stays readable and does nothing). Newlines and tabs are kept unless
    `newlines` is False."""
    text = _CONTROLS.sub(_escape_control, text)
    if not newlines:
        text = text.replace("\n", "\\n").replace("\t", "\\t")
    return text


def data(value: Any, style: str = "") -> Text:
    """A value shown as data: JSON unless a string, never markup, controls escaped."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2,
                                                           default=str)
    return Text(clean(text), style=style)


def _preview(value: Any, width: int = 70) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = clean(" ".join(text.split()))
    return text if len(text) <= width else text[: width - 1] + "…"


def status_text(status: str) -> Text:
    return Text(clean(status), style=STATUS_STYLE.get(status, ""))


def _seconds(start: float | None, end: float | None) -> str:
    if start is None:
        return ""
    return f"{(end or time.time()) - start:.2f}s"


def run_summary(run: RunRecord) -> Group:
    head = Text.assemble(("run ", "bold"), clean(run.id), "  ", (clean(run.pipeline), "bold"),
                         "  ", status_text(run.status))
    lines: list[Any] = [head]
    took = _seconds(run.started_at or run.created_at, run.finished_at)
    u = run.usage
    cost = f"  cost {u.cost:.6g}" if u.cost else ""  # from the models' `prices`
    lines.append(Text(f"took {took}  calls {u.calls}  tokens {u.prompt_tokens} in / "
                      f"{u.completion_tokens} out{cost}", style="dim"))
    if run.parent_run:
        lines.append(Text(clean(f"child of run {run.parent_run}, step {run.parent_step}"),
                          style="dim"))
    if run.schedule:
        lines.append(Text(clean(f"made by schedule {run.schedule}"), style="dim"))
    if run.tenant != "default" or run.priority:
        lines.append(Text(f"tenant {clean(run.tenant)}  priority {run.priority}", style="dim"))
    if run.tags:
        lines.append(Text(f"tags {tags_line(run.tags)}", style="dim"))
    if run.waiting:
        lines.append(Text(run.waiting, style="yellow"))
    if run.held and not run.done:
        lines.append(Text(clean(run.held), style="yellow"))
    if run.error:
        lines.append(Text.assemble("error: ", data(run.error), style="red"))
    if run.status == "succeeded":
        lines.append(Text.assemble("output: ", data(run.output)))
    lines.extend(_callbacks(run))
    return Group(*lines)


def _callbacks(run: RunRecord) -> Iterator[Text]:
    """Whom the run tells when it finishes, and each try at telling them."""
    if run.on_done is None:
        return
    told = run.on_done
    targets = {"task": f"task {told.task}@{told.queue or 'celery'}", "webhook": f"POST {told.url}"}
    for target in told.targets:
        tries = [d for d in run.deliveries if d.target == target]
        state = ("delivered" if any(d.ok for d in tries) else "given up" if any(
            d.final for d in tries) else "pending" if run.done else "when the run finishes")
        yield Text.assemble("on done: ", data(targets[target]), "  ",
                            (state, "green" if state == "delivered" else "red"
                             if state == "given up" else "dim"))
        for d in tries:
            when = time.strftime("%H:%M:%S", time.localtime(d.at))
            what = " ".join(w for w in (f"HTTP {d.status}" if d.status else "", "ok" if d.ok else (
                d.error or "failed") if d.final or not d.status else "") if w)
            yield Text(clean(f"  {when}  {what}  (delivery {d.delivery_id})"),
                       style="" if d.ok else "red")
def tags_line(tags: dict[str, str]) -> str:
    """`k=v k2=v2` (tags are plain ASCII by construction; escaped all the same)."""
    return clean(" ".join(f"{k}={v}" for k, v in tags.items()), newlines=False)


def tree_order(steps: list[StepRecord]) -> list[StepRecord]:
    """Parents before children, siblings by when their subtree started."""
    first: dict[str, float] = {}
    for s in steps:
        parts = s.path.split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            first[prefix] = min(first.get(prefix, float("inf")), s.started_at or 0)

    def key(s: StepRecord) -> list[tuple[float, str]]:
        parts = s.path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return [(first[p], p) for p in prefixes]

    return sorted(steps, key=key)


class RunsView:
    """Runs, newest first, fitted to the width at render time: a table when every run's full id
    and the fixed columns fit beside at least a short error column, else two lines a run (id and
    status, then the rest). Ids are never cut, so any of them can be copied."""

    ERROR_MIN = 16

    def __init__(self, runs: list[RunRecord]) -> None:
        self.runs = runs

    def _rows(self) -> Iterator[tuple[str, ...]]:
        tagged = any(r.tags for r in self.runs)
        for r in self.runs:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))
            took = _seconds(r.started_at, r.finished_at) if r.finished_at else ""
            pipeline = ("↳ " if r.parent_run else "") + r.pipeline  # a child run, marked
            pipeline = f"{pipeline} ({r.schedule})" if r.schedule else pipeline
            held = r.held if not r.done else None
            tags = (tags_line(r.tags),) if tagged else ()
            yield (clean(r.id, newlines=False), clean(pipeline, newlines=False),
                   clean(r.tenant, newlines=False), r.status, created, took, *tags,
                   _preview(r.error or r.waiting or held or "", 200))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        rows = list(self._rows())
        heads: tuple[str, ...] = ("run", "pipeline", "tenant", "status", "created", "took")
        if any(r.tags for r in self.runs):
            heads += ("tags",)
        fixed = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(heads)]
        # A column's cells and 3 characters between columns (rich's padding and rule).
        if sum(fixed) + 3 * len(heads) + self.ERROR_MIN <= options.max_width:
            table = Table(show_edge=False, header_style="bold", pad_edge=False)
            for head, width in zip(heads, fixed, strict=True):
                table.add_column(head, no_wrap=True, min_width=width)
            table.add_column("error", overflow="fold", ratio=1)
            for row in rows:
                table.add_row(Text(row[0]), Text(row[1]), Text(row[2]), status_text(row[3]),
                              *map(Text, row[4:-1]), Text(row[-1], style="red"))
            yield table
            return
        for row in rows:
            run_id, pipeline, tenant, status, created, took, error = (*row[:6], row[-1])
            yield Text.assemble((run_id, "bold"), "  ", status_text(status), overflow="fold")
            rest = Text.assemble(pipeline, "  ", tenant, "  ", (created, "dim"),
                                 (f"  took {took}" if took else "", "dim"))
            if len(row) == 8 and row[6]:
                rest.append_text(Text(f"  tags {row[6]}", style="dim"))
            if error:
                rest.append_text(Text(f"  error: {error}", style="red"))
            yield Padding(rest, (0, 0, 0, 2), expand=False)


def runs_table(runs: list[RunRecord]) -> RunsView:
    return RunsView(runs)
