"""Rendering runs for people: a run summary and a list of runs (rich); the step waterfall is
in waterfall.py, the HTML page in html_report.py."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from legato.envelope import RunRecord, StepRecord

# Every run and step state (envelope.py lists them; a test checks none is missing).
STATUS_STYLE: dict[str, str] = {
    "succeeded": "green", "failed": "red", "running": "yellow", "queued": "cyan",
    "cancelled": "magenta", "skipped": "dim"}


def _preview(value: Any, width: int = 70) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def _seconds(start: float | None, end: float | None) -> str:
    if start is None:
        return ""
    return f"{(end or time.time()) - start:.2f}s"


def run_summary(run: RunRecord) -> Group:
    head = Text.assemble(("run ", "bold"), run.id, "  ", (run.pipeline, "bold"), "  ",
                         status_text(run.status))
    lines: list[Any] = [head]
    took = _seconds(run.started_at or run.created_at, run.finished_at)
    u = run.usage
    cost = f"  cost {u.cost:.6g}" if u.cost else ""  # from the models' `prices`
    lines.append(Text(f"took {took}  calls {u.calls}  tokens {u.prompt_tokens} in / "
                      f"{u.completion_tokens} out{cost}", style="dim"))
    if run.waiting:
        lines.append(Text(run.waiting, style="yellow"))
    if run.error:
        lines.append(Text(f"error: {run.error}", style="red"))
    if run.status == "succeeded":
        output = run.output if isinstance(run.output, str) else json.dumps(run.output, indent=2)
        lines.append(Text(f"output: {output}"))
    return Group(*lines)


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


def runs_table(runs: list[RunRecord]) -> Table:
    table = Table(show_edge=False, header_style="bold")
    for column in ("run", "pipeline", "status", "created", "took", "error"):
        table.add_column(column)
    for r in runs:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))
        table.add_row(r.id, r.pipeline, status_text(r.status), created,
                      _seconds(r.started_at, r.finished_at) if r.finished_at else "",
                      _preview(r.error or r.waiting or "", 60))
    return table
