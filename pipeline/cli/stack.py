"""Commands that run processes: worker, beat, flower, model-server, fake-model, demo."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from legato.cli import app, fail
from legato.settings import get_settings


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
    """Run a worker on the given queues (it is `celery -A legato.workers.app worker`)."""
    argv = [sys.executable, "-m", "celery", "-A", "legato.workers.app", "worker", "-Q", queues,
            "-c", str(concurrency), "-P", pool, f"--loglevel={loglevel}"]
    if name:
        argv += ["-n", name]
    os.execv(sys.executable, argv)


@app.command()
def beat(
    check: Annotated[bool, typer.Option(
        "--check", help="check the schedules file and list its schedules; start nothing")] = False,
    loglevel: str = "INFO",
) -> None:
    """Run Celery beat with Legato's schedules: schedules.yaml beside the pipelines (or
    LEGATO_SCHEDULES_FILE). It is `celery -A legato.workers.app beat -S
    legato.workers.beat:Scheduler`.

    The file is checked whole first: a bad one is one line naming the file and the path (exit
    2), and nothing fires. Two beats running by mistake never fire a tick twice."""
    from datetime import UTC, datetime

    from rich.table import Table

    from legato import schedules
    from legato.cli import legato_client, out
    from legato.errors import SpecError
    from legato.report import clean

    try:
        found = schedules.load_for(legato_client())
    except RecursionError:
        fail("the schedules file nests too deeply to load")
    except SpecError as exc:
        fail(str(exc))
    if check:
        now = datetime.now(UTC)
        table = Table(show_edge=False, header_style="bold", pad_edge=False)
        for head in ("schedule", "pipeline", "when", "overlap", "next tick (UTC)"):
            table.add_column(head)
        for entry in found:
            following = entry.following(now)
            table.add_row(clean(entry.name), clean(entry.pipeline), str(entry.clock),
                          entry.overlap, schedules.tick_stamp(following) if following else "never")
        out.print(table)
        return
    argv = [sys.executable, "-m", "celery", "-A", "legato.workers.app", "beat",
            "-S", "legato.workers.beat:Scheduler", f"--loglevel={loglevel}"]
    os.execv(sys.executable, argv)


@app.command()
def flower(
    port: int = 5555,
    address: str = "127.0.0.1",
    basic_auth: Annotated[str | None, typer.Option(
        help="user:password; better set FLOWER_BASIC_AUTH, which no `ps` shows")] = None,
    insecure_no_auth: Annotated[bool, typer.Option(
        "--insecure-no-auth", help="start with no authentication: anyone who reaches the port "
        "sees every task and can send any")] = False,
) -> None:
    """Run Flower against Legato's broker (tasks show under their public names).

    Needs authentication: FLOWER_BASIC_AUTH=user:password (or --basic-auth, or Flower's own
    FLOWER_AUTH_PROVIDER); refuses to start without it unless given --insecure-no-auth. The
    password goes to Flower in its environment, never on its command line.
    """
    argv = [sys.executable, "-m", "celery", "-A", "legato.workers.app", "flower", f"--port={port}",
            f"--address={address}"]
    env = dict(os.environ)
    auth = basic_auth or env.get("FLOWER_BASIC_AUTH", "")
    if auth:
        for pair in auth.split(","):
            user, colon, password = pair.partition(":")
            if not (user and colon and password):
                fail("FLOWER_BASIC_AUTH (or --basic-auth) is user:password[,user:password...]")
        env["FLOWER_BASIC_AUTH"] = auth
    else:
        env.pop("FLOWER_BASIC_AUTH", None)  # empty: Flower would take it as a user named ""
        if not env.get("FLOWER_AUTH_PROVIDER") and not insecure_no_auth:
            fail("Flower would start with no authentication: set FLOWER_BASIC_AUTH=user:password "
                 "(or pass --insecure-no-auth to run it open)")
    os.execve(sys.executable, argv, env)


@app.command("model-server")
def model_server(
    port: int = 8080,
    host: str = "127.0.0.1",
    model_path: Annotated[Path | None, typer.Option(help="a GGUF; default SmolLM2-135M")] = None,
) -> None:
    """Serve the local model (llama.cpp's OpenAI-compatible server) in the foreground."""
    from legato.local.model_server import LocalModelServer

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
    from legato.local import fake_model as fake

    fake.run(host, port, str(script) if script else None)


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="local (llama.cpp + SmolLM2) or fake")] = "local",
    keep: Annotated[bool | None, typer.Option(help="keep running until Ctrl-C")] = None,
) -> None:
    """Start Redis, a model, workers and Flower; submit every example pipeline; show results.

    With LEGATO_MODEL_BASE_URL set, the pipelines call that OpenAI-compatible API instead.
    """
    from legato.local.demo import run_demo

    if model not in ("local", "fake"):
        fail("--model is `local` or `fake`")
    raise typer.Exit(run_demo(get_settings(), model=model, keep=keep))
