"""`legato demo`: the whole stack on one machine, every example pipeline run once.

Starts a private Redis, a model (the local llama.cpp server with SmolLM2, or the fake model, or
whatever OpenAI-compatible API LEGATO_MODEL_BASE_URL points at), two workers (default queues and
the example branch queues), Flower and the console (`legato serve`); submits one job per
pipeline under pipelines/ with a progress bar; prints the outputs and the Flower and console
URLs; stops everything on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from legato.client import Legato
from legato.envelope import RunRecord
from legato.loader import available_pipelines
from legato.local import processes
from legato.local.net import free_port, port_open
from legato.local.redis_server import RedisServer
from legato.queues import DEFAULT_QUEUES
from legato.report import clean, data
from legato.settings import Settings, replace

BRANCH_QUEUES = ["legato.branch.billing", "legato.branch.technical"]


def _model_url(stack: ExitStack, settings: Settings, model: str, console: Console,
               logs: Path) -> str:
    if settings.model_base_url:
        console.print(f"model: {settings.model_base_url} (from the environment)")
        return settings.model_base_url
    if model == "fake":
        service = stack.enter_context(processes.fake_model(log_dir=logs))
        console.print("model: the fake model server")
        return processes.fake_model_url(service)
    from legato.local.model_server import LocalModelServer

    with console.status("starting the local model (llama.cpp + SmolLM2-135M)…"):
        server = stack.enter_context(LocalModelServer(log_path=logs / "model.log"))
    console.print(f"model: SmolLM2-135M on llama.cpp at {server.base_url}")
    return server.base_url


def _warn_unserved(legato: Legato, names: list[str], console: Console) -> None:
    """Say which queues the example pipelines send to that no worker here serves (a worker just
    started advertises its queues within a moment: allow it that)."""
    specs = {name: legato.load(name) for name in names}
    deadline = time.monotonic() + 5
    unserved = {name: legato.unserved_queues(spec) for name, spec in specs.items()}
    while any(unserved.values()) and time.monotonic() < deadline:
        time.sleep(0.25)
        unserved = {name: legato.unserved_queues(spec) for name, spec in specs.items()}
    for name in names:
        for queue, steps in unserved[name].items():
            console.print(f"warning: {name}: no running worker serves queue {queue} (steps: "
                          f"{', '.join(steps) or 'closing the run'})", style="yellow",
                          markup=False, highlight=False)


def _submit_all(legato: Legato, names: list[str], pipelines_dir: Path, console: Console,
                timeout: float) -> list[RunRecord]:
    runs: dict[str, str] = {}
    to_signal: dict[str, list[tuple[str, Any]]] = {}  # a wait step's signal, sent once it waits
    for name in names:
        example = pipelines_dir / f"{name}.input.json"
        payload = json.loads(example.read_text()) if example.exists() else {}
        runs[name] = legato.submit(name, payload)
        signals = pipelines_dir / f"{name}.signals.json"
        if signals.exists():
            to_signal[name] = list(json.loads(signals.read_text()).items())
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    done: dict[str, RunRecord] = {}
    deadline = time.monotonic() + timeout
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("running the example pipelines", total=len(runs))
        while len(done) < len(runs) and time.monotonic() < deadline:
            for name, run_id in runs.items():
                record = legato.status(run_id)
                if record.status == "waiting" and to_signal.get(name):
                    _approve(legato, run_id, *to_signal[name].pop(0), console)
                if name not in done and record.done:
                    done[name] = record
                    progress.advance(bar)
            time.sleep(0.2)
    return [done.get(name) or legato.status(run_id) for name, run_id in runs.items()]


def _approve(legato: Legato, run_id: str, step: str, data: Any, console: Console) -> None:
    """Send the signal a person would, saying the command that does the same."""
    legato.signal(run_id, step, data, by="demo")
    command = f"legato signal {run_id} {step} --data {shlex.quote(json.dumps(data))} --by demo"
    console.print(f"run {run_id} waited at {step}; the demo approved it: {command}")


def _show(console: Console, records: list[RunRecord], legato: Legato) -> None:
    """Each run in a panel: its pipeline and outcome as the title, its id on the first line
    (inside, where no width cuts it), the child runs its `pipeline` steps started, then its
    output or error, as data (never markup)."""
    for r in records:
        took = f"{(r.finished_at or time.time()) - r.created_at:.1f}s"
        ok = r.status == "succeeded"
        body = Text.assemble(("run ", "dim"), (r.id, "bold"), "\n")
        for path, child in sorted(legato.store.children(r.id).items()):
            body.append_text(Text(clean(f"  ↳ child run {child} (step {path})\n"), style="dim"))
        if ok:
            body.append_text(data(r.output.strip() if isinstance(r.output, str) else r.output))
        else:
            body.append_text(data(str(r.error), style="red"))
        title = Text(clean(f"{r.pipeline} · {r.status} · {took} · {r.usage.calls} model calls",
                           newlines=False))
        console.print(Panel(body, title=title, title_align="left",
                            border_style="green" if ok else "red"))


def run_demo(settings: Settings, *, model: str = "local", keep: bool | None = None,
             timeout: float = 900.0) -> int:
    """Returns the exit code: 0 all succeeded, 1 some run did not, 130 interrupted."""
    console = Console()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the stack as cleanly as Ctrl-C
    # Ctrl-C stops it even when started by a shell that ignores SIGINT (a background job of a
    # script): Python leaves an inherited SIG_IGN in place, and the demo would never stop
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _run(console, settings, model, keep, timeout)
    except KeyboardInterrupt:  # during start-up or a run: the stack is already stopped
        console.print("interrupted; everything stopped")
        return 130


def _run(console: Console, settings: Settings, model: str, keep: bool | None,
         timeout: float) -> int:
    keep = sys.stdin.isatty() if keep is None else keep
    pipelines_dir = settings.pipelines_dir.resolve()
    names = available_pipelines(pipelines_dir)
    with ExitStack() as stack:
        logs = Path(stack.enter_context(_tempdir()))
        redis = stack.enter_context(RedisServer())
        console.print(f"redis: {redis.url} (private, AOF on)")
        env = {
            "LEGATO_REDIS_URL": redis.url,
            "LEGATO_MODEL_BASE_URL": _model_url(stack, settings, model, console, logs),
            "LEGATO_PIPELINES_DIR": str(pipelines_dir),
        }
        os.environ.update(env)  # for models.yaml's ${LEGATO_MODEL_BASE_URL} in this process
        with console.status("starting workers, Flower and the console…"):
            stack.enter_context(processes.worker("main", list(DEFAULT_QUEUES), env=env,
                                                 log_dir=logs))
            stack.enter_context(processes.worker("branches", BRANCH_QUEUES, env=env,
                                                 log_dir=logs))
            flower_port = 5555 if not port_open("127.0.0.1", 5555) else free_port()
            flower_auth = f"demo:{secrets.token_urlsafe(9)}"  # a fresh password each demo
            stack.enter_context(processes.flower(flower_port, env=env, basic_auth=flower_auth,
                                                 log_dir=logs))
            console_port = 8000 if not port_open("127.0.0.1", 8000) else free_port()
            console_token = secrets.token_urlsafe(12)  # a fresh token each demo, too
            stack.enter_context(processes.console(console_port, env=env, token=console_token,
                                                  log_dir=logs))
        legato = Legato(replace(settings, redis_url=redis.url, pipelines_dir=pipelines_dir,
                                model_base_url=env["LEGATO_MODEL_BASE_URL"]))
        _warn_unserved(legato, names, console)
        records = _submit_all(legato, names, pipelines_dir, console, timeout)
        _show(console, records, legato)
        user, _, password = flower_auth.partition(":")
        console.print(f"Flower: http://127.0.0.1:{flower_port} (user {user}, password "
                      f"{password})   logs: {logs}", markup=False, highlight=False)
        console.print(f"Console: http://127.0.0.1:{console_port} (any user, password "
                      f"{console_token}; API: Authorization: Bearer {console_token})",
                      markup=False, highlight=False)
        if keep:
            console.print(f"inspect a run: LEGATO_REDIS_URL={redis.url} legato show RUN_ID")
            console.print("[bold]running — press Ctrl-C to stop[/]")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                console.print("stopping…")
    if keep:
        console.print("stopped")
    failed = [r for r in records if r.status != "succeeded"]
    return 1 if failed else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _tempdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="legato-demo-")
