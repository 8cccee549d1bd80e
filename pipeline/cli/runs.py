"""Commands about jobs and runs: submit, status, show, watch, report, cancel, resume, signal,
replay, runs, validate."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.text import Text

from legato.cli import (
    EXIT_RUN_FAILED,
    EXIT_TIMEOUT,
    MAX_INPUT_DEPTH,
    JsonFlag,
    app,
    depth,
    err,
    fail,
    legato_client,
    out,
    print_json,
    print_run,
    read_input,
    resolve_run,
    say,
)
from legato.client import Legato
from legato.envelope import RUN_STATUSES
from legato.errors import InputError, RunNotFound, SpecError
from legato.report import clean

RunId = Annotated[str, typer.Argument(help="a run id, or a unique prefix of one")]
TagOption = Annotated[list[str] | None, typer.Option(
    "--tag", help="key=value; repeat for more (letters, digits and _ . - / in keys)")]


def tags_of(pairs: list[str] | None) -> dict[str, str]:
    """--tag options as checked tags; exit 2 naming a bad one."""
    from legato.tags import parse_tags

    try:
        return parse_tags(pairs or [])
    except InputError as exc:
        fail(str(exc))
MODELS_FILES = ("models.yaml", "models.yml")
SCHEDULES_FILES = ("schedules.yaml", "schedules.yml")


def refuse_spec(legato: Legato, pipeline: str, exc: SpecError) -> NoReturn:
    """Exit 2 with the spec error, saying so when the "pipeline" is the models file."""
    settings = legato.settings
    candidates = [Path(pipeline)] + [settings.pipelines_dir / f"{pipeline}{suffix}"
                                     for suffix in ("", ".yaml", ".yml")]
    for path in candidates:
        is_models = path.name in MODELS_FILES or (
            path.is_file() and settings.models_path.is_file()
            and path.resolve() == settings.models_path.resolve())
        if is_models and (path.is_file() or path.name in MODELS_FILES):
            fail(f"{pipeline}: {path.name} is the models file, not a pipeline (it defines the "
                 f"model aliases pipelines use; submit a pipeline by name or file, e.g. "
                 f"`legato submit summarize`)")
        if path.name in SCHEDULES_FILES and path.is_file():
            fail(f"{pipeline}: {path.name} is the schedules file, not a pipeline (`legato beat` "
                 f"runs it)")
    fail(str(exc))


def timed_out(run_id: str, timeout: float, status: str) -> NoReturn:
    err.print(Text(clean(f"timed out after {timeout:g}s: run {run_id} is still {status} (it goes "
                         f"on; see `legato status {run_id}`)"), style="yellow"),
              highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_TIMEOUT)


def wait_for(legato: Legato, run_id: str, timeout: float) -> Any:
    """The finished run; exit 3 after `timeout`. Redis going away while waiting (it was there a
    moment ago) is ridden out until the timeout, with one note."""
    import redis

    deadline = time.monotonic() + timeout
    noted = False
    while True:
        try:
            return legato.wait(run_id, timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            timed_out(run_id, timeout, legato.status(run_id).status)
        except redis.ConnectionError:
            if time.monotonic() >= deadline:
                raise
            if not noted:
                err.print(Text("lost Redis while waiting; trying again until the timeout",
                               style="yellow"), highlight=False)
                noted = True
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


@app.command()
def submit(
    pipeline: Annotated[str, typer.Argument(help="pipeline name or file")],
    input: Annotated[str, typer.Option(
        "--input", "-i", help="JSON, or @file; @file.jsonl submits one job per line")] = "{}",
    wait: Annotated[bool, typer.Option(help="wait for the run to finish")] = False,
    timeout: Annotated[float, typer.Option(
        help="seconds to wait; then exit 3 (the run goes on)")] = 600.0,
    idempotency_key: Annotated[str | None, typer.Option(help="same key, same run")] = None,
    on_done_task: Annotated[str | None, typer.Option(
        "--on-done-task", metavar="NAME[@QUEUE]",
        help="when the run finishes, send this Celery task its outcome (on QUEUE; default "
             "`celery`)")] = None,
    on_done_url: Annotated[str | None, typer.Option(
        "--on-done-url", metavar="URL",
        help="when the run finishes, POST its outcome here, signed (the host must be in "
             "LEGATO_WEBHOOK_HOSTS)")] = None,
    tenant: Annotated[str | None, typer.Option(help="whose fair share it runs in")] = None,
    priority: Annotated[int | None, typer.Option(
        help="-1000..1000, higher first within its tenant")] = None,
    tag: TagOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Submit one job; print its run id (or, with --wait, its outcome).

    Exit codes: 0 ok (with --wait: succeeded); 1 the run failed or was cancelled;
    2 refused (bad pipeline, input or callback); 3 --wait timed out (the run goes on).
    """
    tags = tags_of(tag)
    legato = legato_client()
    on_done = _on_done(on_done_task, on_done_url)
    if input.startswith("@") and input.endswith(".jsonl"):
        submit_batch(legato, pipeline, Path(input[1:]), wait, timeout, idempotency_key, as_json,
                     on_done=on_done, tenant=tenant, priority=priority, tags=tags)
        return
    payload = read_input(input)
    try:
        run_id = legato.submit(pipeline, payload, idempotency_key=idempotency_key,
                               on_done=on_done, tenant=tenant, priority=priority, tags=tags)
    except RecursionError:  # the input's depth is already bounded: the pipeline file is not
        fail(f"{pipeline}: the pipeline nests too deeply to load")
    except SpecError as exc:
        refuse_spec(legato, pipeline, exc)
    except InputError as exc:
        fail(str(exc))
    if not wait:
        print_json({"run_id": run_id}) if as_json else say(run_id)
        return
    record = wait_for(legato, run_id, timeout)
    print_run(record, as_json)
    if record.status != "succeeded":
        raise typer.Exit(EXIT_RUN_FAILED)


def _on_done(task: str | None, url: str | None) -> dict[str, str] | None:
    """--on-done-task NAME[@QUEUE] and --on-done-url URL, as `on_done` (checked at submit)."""
    on_done: dict[str, str] = {}
    if task is not None:
        name, at, queue = task.partition("@")
        on_done["task"] = name
        if at:
            on_done["queue"] = queue
    if url is not None:
        on_done["url"] = url
    return on_done or None


def submit_batch(legato: Legato, pipeline: str, path: Path, wait: bool, timeout: float,
                  key_prefix: str | None, as_json: bool, *,
                  on_done: dict[str, str] | None = None, tenant: str | None = None,
                  priority: int | None = None, tags: dict[str, str] | None = None) -> None:
    from legato.batch import read_jsonl, submit_batch, wait_all
    from legato.report import runs_table

    try:
        inputs = read_jsonl(path)
        for number, item in enumerate(inputs, start=1):
            if depth(item) > MAX_INPUT_DEPTH:
                fail(f"--input @{path}: input {number}: JSON nested too deeply (the limit is "
                     f"{MAX_INPUT_DEPTH} levels)")
    except RecursionError:
        fail(f"--input @{path}: JSON nested too deeply (the limit is {MAX_INPUT_DEPTH} levels)")
    except InputError as exc:
        fail(str(exc))
    except FileNotFoundError:
        fail(f"--input @{path}: no such file")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"--input @{path}: cannot read it: {getattr(exc, 'strerror', None) or exc}")
    try:
        run_ids = submit_batch(legato, pipeline, inputs, console=err,
                               idempotency_prefix=key_prefix, on_done=on_done, tenant=tenant,
                               priority=priority, tags=tags)
    except RecursionError:
        fail(f"{pipeline}: the pipeline nests too deeply to load")
    except SpecError as exc:
        refuse_spec(legato, pipeline, exc)
    except InputError as exc:
        fail(str(exc))
    if not wait:
        print_json({"run_ids": run_ids}) if as_json else say("\n".join(run_ids))
        return
    try:
        records = wait_all(legato, run_ids, timeout=timeout, console=err)
    except TimeoutError:
        going = [r for r in run_ids if not legato.status(r).done]
        err.print(Text(f"timed out after {timeout:g}s: {len(going)} of {len(run_ids)} runs are "
                       f"still going (they go on; `legato runs` lists them)", style="yellow"),
                  highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_TIMEOUT) from None
    if as_json:
        print_json([r.model_dump(mode="json") for r in records])
    else:
        out.print(runs_table(records))
    if any(r.status != "succeeded" for r in records):
        raise typer.Exit(EXIT_RUN_FAILED)


@app.command()
def status(run_id: RunId, as_json: JsonFlag = False) -> None:
    """A run's status, output or error, and usage; the child runs its `pipeline` steps
    started."""
    legato = legato_client()
    run_id = resolve_run(legato, run_id)
    print_run(legato.status(run_id), as_json)
    if not as_json:
        for path, child in _children(legato, run_id):
            out.print(Text(clean(f"↳ step {path}: child run {child} "
                                 f"({legato.status(child).status})")), highlight=False)


@app.command()
def show(run_id: RunId, as_json: JsonFlag = False) -> None:
    """A run's waterfall: step tree, queue, worker, timings, tokens, route decisions; the child
    runs its `pipeline` steps started, nested under it.

    Fits the terminal's width (or COLUMNS; 80 in a pipe): one table when wide, two lines a step
    when narrow; ids are never cut."""
    legato = legato_client()
    run_id = resolve_run(legato, run_id)
    if as_json:
        print_json(_run_tree(legato, run_id))
        return
    _show_tree(legato, run_id, 0)


def _run_tree(legato: Legato, run_id: str) -> dict[str, Any]:
    """A run, its steps and (under `children`, by the step that started each) its child runs."""
    tree = {"run": legato.status(run_id).model_dump(mode="json"),
            "steps": [s.model_dump(mode="json") for s in legato.steps(run_id)]}
    children = {path: _run_tree(legato, child) for path, child in _children(legato, run_id)}
    return {**tree, "children": children} if children else tree


def _show_tree(legato: Legato, run_id: str, level: int) -> None:
    """A run's summary and waterfall, then each child run's, indented under it."""
    from rich.padding import Padding

    from legato.report import run_summary
    from legato.waterfall import waterfall

    record = legato.status(run_id)
    indent = (1 if level else 0, 0, 0, 4 * level)
    out.print(Padding(run_summary(record), indent))
    out.print(Padding(waterfall(record, legato.steps(run_id)), (0, 0, 0, 4 * level)))
    for _, child in _children(legato, run_id):
        _show_tree(legato, child, level + 1)


def _children(legato: Legato, run_id: str) -> list[tuple[str, str]]:
    """(step path, child run id) of the child runs still kept, in path order."""
    kept = []
    for path, child in sorted(legato.store.children(run_id).items()):
        try:
            legato.status(child)
        except RunNotFound:  # pruned or expired before its parent
            continue
        kept.append((path, child))
    return kept


@app.command()
def report(
    run_id: RunId,
    html: Annotated[Path, typer.Option("--html", help="write a self-contained HTML page here")],
) -> None:
    """Write a run's report: one HTML file with a timeline chart and every step's input/output."""
    from legato.html_report import render_html

    legato = legato_client()
    run_id = resolve_run(legato, run_id)
    record = legato.status(run_id)
    spec = legato.store.get_spec(record.spec_hash)
    page = render_html(record, legato.steps(run_id), spec, legato.store.get_outputs(run_id))
    try:
        html.write_text(page, encoding="utf-8")
    except OSError as exc:
        fail(f"--html {html}: cannot write it: {exc.strerror or exc}")
    say(f"wrote {html} ({len(page.encode()) // 1024 + 1} KiB)")


@app.command()
def cancel(run_id: RunId) -> None:
    """Cancel a run: steps not yet begun will not run; steps in flight finish their call."""
    legato = legato_client()
    run_id = resolve_run(legato, run_id)
    try:
        changed = legato.cancel(run_id)
    except RunNotFound as exc:
        fail(str(exc))
    say(f"cancelled {run_id}" if changed else f"{run_id} had already finished")


@app.command()
def resume(
    run_id: RunId,
    wait: Annotated[bool, typer.Option(help="wait for the run to finish")] = False,
    timeout: Annotated[float, typer.Option(
        help="seconds to wait; then exit 3 (the run goes on)")] = 600.0,
) -> None:
    """Continue a failed or cancelled run from where it stopped, reusing completed steps."""
    legato = legato_client()
    run_id = resolve_run(legato, run_id)
    try:
        legato.resume(run_id)
    except (RunNotFound, InputError) as exc:
        fail(str(exc))
    if not wait:
        say(f"resumed {run_id}")
        return
    record = wait_for(legato, run_id, timeout)
    print_run(record, False)
    if record.status != "succeeded":
        raise typer.Exit(EXIT_RUN_FAILED)


@app.command()
def signal(
    run_id: RunId,
    step: Annotated[str, typer.Argument(help="the wait step (its id or path)")],
    data: Annotated[str, typer.Option("--data", help="the payload: JSON, or @file")] = "null",
    by: Annotated[str | None, typer.Option(help="who sends it (kept in the step record)")] = None,
) -> None:
    """Send a signal to a waiting step: its payload (checked against the step's schema) becomes
    the step's output and the run goes on. Sent early, it is kept until the run gets there."""
    payload = read_input(data, "--data")
    legato = legato_client()
    run_id = resolve_run(legato, run_id)
    try:
        reply = legato.signal(run_id, step, payload, by=by)
    except (RunNotFound, InputError) as exc:
        fail(str(exc))
    say(f"signalled {run_id} step {reply.path}: " + (
        "resumed" if reply.state == "resumed" else "kept until the run reaches it"))


@app.command()
def replay(
    run_id: RunId,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the replay")] = 300.0,
) -> None:
    """Run a finished run again from its recorded model calls; report any difference (exit 1)."""
    from legato.models.replay import replay as replay_run

    legato = legato_client()
    run_id = resolve_run(legato, run_id)
    try:
        result = replay_run(legato, run_id, timeout=timeout)
    except (RunNotFound, ValueError) as exc:
        fail(str(exc))
    except TimeoutError:
        fail(f"the replay of {run_id} did not finish within {timeout:g}s", EXIT_TIMEOUT)
    say(f"replayed {run_id} as {result.replay.id}: {result.replay.status}")
    for diff in result.differences:
        say(f"differs {diff.where}: recorded {diff.recorded!r}, replayed {diff.replayed!r}",
            style="red")
    if result.differences:
        raise typer.Exit(EXIT_RUN_FAILED)
    say("identical: every step's output and the run's output are the same")


@app.command()
def runs(
    status: Annotated[str | None, typer.Option(help="only runs in this state")] = None,
    schedule: Annotated[str | None, typer.Option(
        help="only runs this schedule (schedules.yaml) made")] = None,
    tenant: Annotated[str | None, typer.Option(help="only this tenant's runs")] = None,
    pipeline: Annotated[str | None, typer.Option(help="only runs of this pipeline")] = None,
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", help="only runs with this key=value tag; repeat: all of them")] = None,
    search: Annotated[str | None, typer.Option(
        help="only runs with this text in their input, output or error (any case)")] = None,
    limit: int = 20,
    as_json: JsonFlag = False,
) -> None:
    """Recent runs, newest first, with their full ids (any unique prefix of one works as a run
    id): one table row a run when wide, two lines a run when narrow. A run a schedule made shows
    the schedule's name beside its pipeline."""
    from legato.report import runs_table

    if status is not None and status not in RUN_STATUSES:
        fail(f"no run state {status!r}: one of {', '.join(sorted(RUN_STATUSES))}")
    if limit < 1:
        fail(f"--limit {limit}: at least 1")
    records = legato_client().runs(status=status, limit=limit, pipeline=pipeline,
                                   tags=tags_of(tag), text=search, schedule=schedule,
                                   tenant=tenant)
    if as_json:
        print_json([r.model_dump(mode="json") for r in records])
    else:
        out.print(runs_table(records))


@app.command()
def validate(pipeline: Annotated[str, typer.Argument(help="pipeline name or file")]) -> None:
    """Check a pipeline file without running it."""
    legato = legato_client()
    try:
        spec = legato.load(pipeline)
    except RecursionError:
        fail(f"{pipeline}: the pipeline nests too deeply to load")
    except SpecError as exc:
        refuse_spec(legato, pipeline, exc)
    out.print(Text.assemble(("ok", "green"), " ", clean(f"{spec.name} ({spec.content_hash()})")),
              highlight=False)
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


@app.command()
def watch(
    run_id: RunId,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print each event as a JSON line instead of the live view")] = False,
    after: Annotated[str | None, typer.Option(
        "--after", help="start after this event id (resume a watch)")] = None,
) -> None:
    """Follow a run live: each step's model text as it streams, aborted attempts marked; ends
    when the run ends (exit 1 if it did not succeed)."""
    from rich.live import Live

    from legato.watch import RunView

    legato = legato_client()
    run_id = resolve_run(legato, run_id)
    view = RunView()
    if as_json:
        for event in legato.stream(run_id, after):
            view.apply(event)
            out.print_json(event.model_dump_json(), highlight=False, indent=None)
    else:
        with Live(view.render(), console=out, refresh_per_second=8,
                  transient=False) as live:
            for event in legato.stream(run_id, after):
                view.apply(event)
                live.update(view.render())
    if view.status != "succeeded":
        raise typer.Exit(EXIT_RUN_FAILED)
