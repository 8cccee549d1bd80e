"""Commands about jobs and runs: submit, status, show, report, cancel, resume, replay, runs,
validate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from legato.cli import (
    JsonFlag,
    app,
    err,
    fail,
    legato_client,
    out,
    print_run,
    read_input,
)
from legato.client import Legato
from legato.envelope import RUN_STATUSES
from legato.errors import InputError, RunNotFound, SpecError


@app.command()
def submit(
    pipeline: Annotated[str, typer.Argument(help="pipeline name or file")],
    input: Annotated[str, typer.Option(
        "--input", "-i", help="JSON, or @file; @file.jsonl submits one job per line")] = "{}",
    wait: Annotated[bool, typer.Option(help="wait for the run to finish")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 600.0,
    idempotency_key: Annotated[str | None, typer.Option(help="same key, same run")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Submit one job; print its run id (or, with --wait, its outcome)."""
    legato = legato_client()
    if input.startswith("@") and input.endswith(".jsonl"):
        submit_batch(legato, pipeline, Path(input[1:]), wait, timeout, idempotency_key, as_json)
        return
    try:
        run_id = legato.submit(pipeline, read_input(input), idempotency_key=idempotency_key)
    except (SpecError, InputError) as exc:
        fail(str(exc))
    if not wait:
        out.print_json(data={"run_id": run_id}) if as_json else out.print(run_id)
        return
    record = legato.wait(run_id, timeout=timeout)
    print_run(record, as_json)
    if record.status != "succeeded":
        raise typer.Exit(1)


def submit_batch(legato: Legato, pipeline: str, path: Path, wait: bool, timeout: float,
                  key_prefix: str | None, as_json: bool) -> None:
    from legato.batch import read_jsonl, submit_batch, wait_all
    from legato.report import runs_table

    try:
        run_ids = submit_batch(legato, pipeline, read_jsonl(path), console=err,
                               idempotency_prefix=key_prefix)
    except (SpecError, InputError, OSError) as exc:
        fail(str(exc))
    if not wait:
        out.print_json(data={"run_ids": run_ids}) if as_json else out.print("\n".join(run_ids))
        return
    records = wait_all(legato, run_ids, timeout=timeout, console=err)
    if as_json:
        out.print_json(data=[r.model_dump(mode="json") for r in records])
    else:
        out.print(runs_table(records))
    if any(r.status != "succeeded" for r in records):
        raise typer.Exit(1)


@app.command()
def status(run_id: str, as_json: JsonFlag = False) -> None:
    """A run's status, output or error, and usage."""
    try:
        record = legato_client().status(run_id)
    except RunNotFound as exc:
        fail(str(exc))
    print_run(record, as_json)


@app.command()
def show(run_id: str, as_json: JsonFlag = False) -> None:
    """A run's waterfall: step tree, queue, worker, timings, tokens, route decisions."""
    from legato.waterfall import waterfall

    legato = legato_client()
    try:
        record = legato.status(run_id)
    except RunNotFound as exc:
        fail(str(exc))
    steps = legato.steps(run_id)
    if as_json:
        out.print_json(data={"run": record.model_dump(mode="json"),
                             "steps": [s.model_dump(mode="json") for s in steps]})
        return
    print_run(record, False)
    out.print(waterfall(record, steps))


@app.command()
def report(
    run_id: str,
    html: Annotated[Path, typer.Option("--html", help="write a self-contained HTML page here")],
) -> None:
    """Write a run's report: one HTML file with a timeline chart and every step's input/output."""
    from legato.html_report import render_html

    legato = legato_client()
    try:
        record = legato.status(run_id)
    except RunNotFound as exc:
        fail(str(exc))
    spec = legato.store.get_spec(record.spec_hash)
    page = render_html(record, legato.steps(run_id), spec, legato.store.get_outputs(run_id))
    html.write_text(page, encoding="utf-8")
    out.print(f"wrote {html} ({len(page.encode()) // 1024 + 1} KiB)")


@app.command()
def cancel(run_id: str) -> None:
    """Cancel a run: steps not yet begun will not run; steps in flight finish their call."""
    try:
        changed = legato_client().cancel(run_id)
    except RunNotFound as exc:
        fail(str(exc))
    out.print(f"cancelled {run_id}" if changed else f"{run_id} had already finished")


@app.command()
def resume(
    run_id: str,
    wait: Annotated[bool, typer.Option(help="wait for the run to finish")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 600.0,
) -> None:
    """Continue a failed or cancelled run from where it stopped, reusing completed steps."""
    legato = legato_client()
    try:
        legato.resume(run_id)
    except (RunNotFound, InputError) as exc:
        fail(str(exc))
    if not wait:
        out.print(f"resumed {run_id}")
        return
    record = legato.wait(run_id, timeout=timeout)
    print_run(record, False)
    if record.status != "succeeded":
        raise typer.Exit(1)


@app.command()
def replay(
    run_id: str,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the replay")] = 300.0,
) -> None:
    """Run a finished run again from its recorded model calls; report any difference (exit 1)."""
    from legato.models.replay import replay as replay_run

    try:
        result = replay_run(legato_client(), run_id, timeout=timeout)
    except (RunNotFound, ValueError) as exc:
        fail(str(exc))
    out.print(f"replayed {run_id} as {result.replay.id}: {result.replay.status}")
    for diff in result.differences:
        out.print(f"differs {diff.where}: recorded {diff.recorded!r}, replayed "
                  f"{diff.replayed!r}", markup=False, highlight=False, style="red")
    if result.differences:
        raise typer.Exit(1)
    out.print("identical: every step's output and the run's output are the same")


@app.command()
def runs(
    status: Annotated[str | None, typer.Option(help="only runs in this state")] = None,
    limit: int = 20,
    as_json: JsonFlag = False,
) -> None:
    """Recent runs, newest first."""
    from legato.report import runs_table

    if status is not None and status not in RUN_STATUSES:
        fail(f"no run state {status!r}: one of {', '.join(sorted(RUN_STATUSES))}")
    records = legato_client().runs(status=status, limit=limit)
    if as_json:
        out.print_json(data=[r.model_dump(mode="json") for r in records])
    else:
        out.print(runs_table(records))


@app.command()
def validate(pipeline: Annotated[str, typer.Argument(help="pipeline name or file")]) -> None:
    """Check a pipeline file without running it."""
    try:
        spec = legato_client().load(pipeline)
    except SpecError as exc:
        fail(str(exc))
    out.print(f"[green]ok[/] {spec.name} ({spec.content_hash()})")
    try:
        unserved = legato_client().unserved_queues(spec)
    except Exception as exc:  # the file is fine; whether workers serve it is a bonus
        err.print(f"note: could not check which queues workers serve ({type(exc).__name__})")
        return
    for queue, steps in unserved.items():
        err.print(Text(f"warning: no running worker serves queue {queue} "
                       f"(steps: {', '.join(steps) or 'closing the run'})", style="yellow"))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """`90`, `90s`, `30m`, `12h`, `7d` -> seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        fail(f"--older-than {text!r}: a number with s, m, h or d, like 7d")
    if seconds < 0:
        fail(f"--older-than {text!r}: not negative")
    return seconds


@app.command()
def prune(older_than: Annotated[str, typer.Option(
        "--older-than", help="finished more than this long ago: 90s, 30m, 12h, 7d")]) -> None:
    """Delete finished runs (record, journal, outputs, votes, budget, idempotency key) now,
    rather than when LEGATO_RUN_TTL expires them."""
    gone = legato_client().store.prune(older_than=_duration(older_than))
    out.print(f"pruned {gone} run{'s' if gone != 1 else ''}")
