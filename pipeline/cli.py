"""`legato`: submit jobs, look at runs, run workers, Flower and the local stack.

Exit codes: 0 ok, 1 a run failed (with --wait), 2 bad input (pipeline file, job input, run id).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from pipeline.errors import InputError, RunNotFound, SpecError
from pipeline.settings import get_settings

if TYPE_CHECKING:
    from pipeline.client import Legato

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Legato: durable AI orchestration on Celery + Redis.")
out = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def _client() -> Legato:
    from pipeline.client import Legato

    return Legato()


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _read_input(value: str) -> Any:
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"--input is not JSON: {exc}")


@app.command()
def submit(
    pipeline: Annotated[str, typer.Argument(help="pipeline name or file")],
    input: Annotated[str, typer.Option("--input", "-i", help="JSON, or @file")] = "{}",
    wait: Annotated[bool, typer.Option(help="wait for the run to finish")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 600.0,
    idempotency_key: Annotated[str | None, typer.Option(help="same key, same run")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Submit one job; print its run id (or, with --wait, its outcome)."""
    legato = _client()
    try:
        run_id = legato.submit(pipeline, _read_input(input), idempotency_key=idempotency_key)
    except (SpecError, InputError) as exc:
        _fail(str(exc))
    if not wait:
        out.print_json(data={"run_id": run_id}) if as_json else out.print(run_id)
        return
    record = legato.wait(run_id, timeout=timeout)
    _print_run(record, as_json)
    if record.status != "succeeded":
        raise typer.Exit(1)


@app.command()
def status(run_id: str, as_json: JsonFlag = False) -> None:
    """A run's status, output or error, and usage."""
    try:
        record = _client().status(run_id)
    except RunNotFound as exc:
        _fail(str(exc))
    _print_run(record, as_json)


@app.command()
def show(run_id: str, as_json: JsonFlag = False) -> None:
    """A run's step tree: queue, worker, timings, tokens, outputs."""
    from pipeline.report import step_table

    legato = _client()
    try:
        record = legato.status(run_id)
    except RunNotFound as exc:
        _fail(str(exc))
    steps = legato.steps(run_id)
    if as_json:
        out.print_json(data={"run": record.model_dump(mode="json"),
                             "steps": [s.model_dump(mode="json") for s in steps]})
        return
    _print_run(record, False)
    out.print(step_table(record, steps))


@app.command()
def runs(
    status: Annotated[str | None, typer.Option(help="only runs in this state")] = None,
    limit: int = 20,
    as_json: JsonFlag = False,
) -> None:
    """Recent runs, newest first."""
    from pipeline.report import runs_table

    records = _client().runs(status=status, limit=limit)
    if as_json:
        out.print_json(data=[r.model_dump(mode="json") for r in records])
    else:
        out.print(runs_table(records))


@app.command()
def validate(pipeline: Annotated[str, typer.Argument(help="pipeline name or file")]) -> None:
    """Check a pipeline file without running it."""
    try:
        spec = _client().load(pipeline)
    except SpecError as exc:
        _fail(str(exc))
    out.print(f"[green]ok[/] {spec.name} ({spec.content_hash()})")


@app.command()
def worker(
    queues: Annotated[str, typer.Option("--queues", "-Q", help="comma-separated")] = (
        "legato.control,legato.llm,legato.tools"),
    concurrency: Annotated[int, typer.Option("--concurrency", "-c")] = 64,
    pool: Annotated[str, typer.Option(help="threads holds many model calls in flight")] = (
        "threads"),
    name: Annotated[str | None, typer.Option("--name", "-n")] = None,
    loglevel: str = "INFO",
) -> None:
    """Run a worker on the given queues (same as `celery -A workers.app worker`)."""
    from workers.app import app as celery_app

    argv = ["worker", "-Q", queues, "-c", str(concurrency), "-P", pool, f"--loglevel={loglevel}"]
    if name:
        argv += ["-n", name]
    celery_app.worker_main(argv)


@app.command()
def flower(
    port: int = 5555,
    address: str = "127.0.0.1",
    basic_auth: Annotated[str | None, typer.Option(help="user:password")] = None,
) -> None:
    """Run Flower against Legato's broker (tasks show under their public names)."""
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "flower", f"--port={port}",
            f"--address={address}"]
    auth = basic_auth or os.environ.get("FLOWER_BASIC_AUTH")
    if auth:
        argv.append(f"--basic-auth={auth}")
    os.execv(sys.executable, argv)


@app.command("fake-model")
def fake_model(
    port: int = 8089,
    host: str = "127.0.0.1",
    script: Annotated[Path | None, typer.Option(help="YAML/JSON replies and faults")] = None,
) -> None:
    """Serve the deterministic, fault-injecting OpenAI-compatible fake model."""
    from pipeline.local import fake_model as fake

    fake.run(host, port, str(script) if script else None)


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="local (llama.cpp + SmolLM2) or fake")] = "local",
    keep: Annotated[bool | None, typer.Option(help="keep running until Ctrl-C")] = None,
) -> None:
    """Start Redis, a model, workers and Flower; submit every example pipeline; show results.

    With LEGATO_MODEL_BASE_URL set, the pipelines call that OpenAI-compatible API instead.
    """
    from pipeline.local.demo import run_demo

    if model not in ("local", "fake"):
        _fail("--model is `local` or `fake`")
    raise typer.Exit(run_demo(get_settings(), model=model, keep=keep))


def _print_run(record: Any, as_json: bool) -> None:
    if as_json:
        out.print_json(data=record.model_dump(mode="json"))
        return
    from pipeline.report import run_summary

    out.print(run_summary(record))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
