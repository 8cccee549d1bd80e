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
    input: Annotated[str, typer.Option(
        "--input", "-i", help="JSON, or @file; @file.jsonl submits one job per line")] = "{}",
    wait: Annotated[bool, typer.Option(help="wait for the run to finish")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 600.0,
    idempotency_key: Annotated[str | None, typer.Option(help="same key, same run")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Submit one job; print its run id (or, with --wait, its outcome)."""
    legato = _client()
    if input.startswith("@") and input.endswith(".jsonl"):
        _submit_batch(legato, pipeline, Path(input[1:]), wait, timeout, idempotency_key, as_json)
        return
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


def _submit_batch(legato: Legato, pipeline: str, path: Path, wait: bool, timeout: float,
                  key_prefix: str | None, as_json: bool) -> None:
    from pipeline.batch import read_jsonl, submit_batch, wait_all
    from pipeline.report import runs_table

    try:
        run_ids = submit_batch(legato, pipeline, read_jsonl(path), console=err,
                               idempotency_prefix=key_prefix)
    except (SpecError, InputError, OSError) as exc:
        _fail(str(exc))
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
        record = _client().status(run_id)
    except RunNotFound as exc:
        _fail(str(exc))
    _print_run(record, as_json)


@app.command()
def show(run_id: str, as_json: JsonFlag = False) -> None:
    """A run's waterfall: step tree, queue, worker, timings, tokens, route decisions."""
    from pipeline.waterfall import waterfall

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
    out.print(waterfall(record, steps))


@app.command()
def report(
    run_id: str,
    html: Annotated[Path, typer.Option("--html", help="write a self-contained HTML page here")],
) -> None:
    """Write a run's report: one HTML file with a timeline chart and every step's input/output."""
    from pipeline.html_report import render_html

    legato = _client()
    try:
        record = legato.status(run_id)
    except RunNotFound as exc:
        _fail(str(exc))
    spec = legato.store.get_spec(record.spec_hash)
    page = render_html(record, legato.steps(run_id), spec, legato.store.get_outputs(run_id))
    html.write_text(page, encoding="utf-8")
    out.print(f"wrote {html} ({len(page.encode()) // 1024 + 1} KiB)")


@app.command()
def cancel(run_id: str) -> None:
    """Cancel a run: steps not yet begun will not run; steps in flight finish their call."""
    try:
        changed = _client().cancel(run_id)
    except RunNotFound as exc:
        _fail(str(exc))
    out.print(f"cancelled {run_id}" if changed else f"{run_id} had already finished")


@app.command()
def resume(
    run_id: str,
    wait: Annotated[bool, typer.Option(help="wait for the run to finish")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 600.0,
) -> None:
    """Continue a failed or cancelled run from where it stopped, reusing completed steps."""
    legato = _client()
    try:
        legato.resume(run_id)
    except (RunNotFound, InputError) as exc:
        _fail(str(exc))
    if not wait:
        out.print(f"resumed {run_id}")
        return
    record = legato.wait(run_id, timeout=timeout)
    _print_run(record, False)
    if record.status != "succeeded":
        raise typer.Exit(1)


@app.command()
def replay(
    run_id: str,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the replay")] = 300.0,
) -> None:
    """Run a finished run again from its recorded model calls; report any difference (exit 1)."""
    from pipeline.models.replay import replay as replay_run

    try:
        result = replay_run(_client(), run_id, timeout=timeout)
    except (RunNotFound, ValueError) as exc:
        _fail(str(exc))
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


@app.command("model-server")
def model_server(
    port: int = 8080,
    host: str = "127.0.0.1",
    model_path: Annotated[Path | None, typer.Option(help="a GGUF; default SmolLM2-135M")] = None,
) -> None:
    """Serve the local model (llama.cpp's OpenAI-compatible server) in the foreground."""
    from pipeline.local.model_server import LocalModelServer

    argv = LocalModelServer(model_path, port=port).command()
    argv[argv.index("--host") + 1] = host
    os.execv(argv[0], argv)


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
