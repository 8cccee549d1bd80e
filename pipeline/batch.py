"""Batch submits: many inputs for one pipeline (a JSON Lines file), with a progress bar.

    legato submit summarize --input @inputs.jsonl [--wait]

Every line is checked against the pipeline's input schema first: one bad line refuses the batch
(naming its line) and nothing is enqueued. Then the runs are submitted with a progress bar and,
with --wait, a second bar follows their completions (in the order they finish).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from legato import callbacks
from legato.client import Legato, check_input
from legato.envelope import RunRecord
from legato.errors import InputError
from legato.report import clean


def read_jsonl(path: Path) -> list[Any]:
    """One JSON value per non-empty line. Raises InputError naming the bad line."""
    items = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: not JSON: {exc}") from None
    if not items:
        raise InputError(f"{path}: no inputs")
    return items


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


def submit_batch(legato: Legato, pipeline: str, inputs: list[Any], *,
                 console: Console, idempotency_prefix: str | None = None,
                 on_done: dict[str, Any] | None = None, tenant: str | None = None,
                 priority: int | None = None, tags: dict[str, str] | None = None) -> list[str]:
    spec = legato.load(pipeline)
    callbacks.check_on_done(on_done, hosts=legato.settings.webhook_hosts)  # before any submit
    for number, item in enumerate(inputs, start=1):
        try:
            check_input(spec, item, max_bytes=legato.settings.max_input_bytes)
        except InputError as exc:
            raise InputError(f"input {number}: {exc}") from None
    run_ids = []
    with _progress(console) as progress:
        # A progress description is markup: the pipeline's name is escaped as data.
        bar = progress.add_task(f"submitting to {escape(clean(spec.name, newlines=False))}",
                                total=len(inputs))
        for number, item in enumerate(inputs, start=1):
            key = f"{idempotency_prefix}-{number}" if idempotency_prefix else None
            run_ids.append(legato.submit(spec, item, idempotency_key=key, on_done=on_done,
                                         tenant=tenant, priority=priority, tags=tags))
            progress.advance(bar)
    return run_ids


def wait_all(legato: Legato, run_ids: Iterable[str], *, timeout: float,
             console: Console) -> list[RunRecord]:
    """Wait for every run, advancing a bar as each finishes; records in submit order."""
    run_ids = list(run_ids)
    done: dict[str, RunRecord] = {}
    with _progress(console) as progress, ThreadPoolExecutor(max_workers=16) as pool:
        bar = progress.add_task("completed", total=len(run_ids))
        futures = {pool.submit(legato.wait, run_id, timeout): run_id for run_id in run_ids}
        failed = 0
        for future in as_completed(futures):
            record = future.result()
            done[futures[future]] = record
            failed += record.status != "succeeded"
            label = "completed" + (f" ([red]{failed} failed[/])" if failed else "")
            progress.update(bar, advance=1, description=label)
    return [done[r] for r in run_ids]
