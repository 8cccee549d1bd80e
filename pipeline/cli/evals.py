"""`legato eval`: a pipeline's baseline and arms over a dataset or recorded runs, scored
(pipeline/evals/). Exit 1 when an arm regresses past `--max-regression`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from legato.cli import EXIT_RUN_FAILED, EXIT_TIMEOUT, app, fail, legato_client, out, say
from legato.errors import InputError, RunNotFound, SpecError


@app.command("eval")
def eval_(
    pipeline: Annotated[str, typer.Argument(help="pipeline name or file (omit with --clean)")]
    = "",
    dataset: Annotated[Path | None, typer.Option(
        help="JSON Lines: {\"input\": ..., \"expected\": ...} per line")] = None,
    from_runs: Annotated[str | None, typer.Option(
        help="recorded runs: pipeline=,status=,eval=,since=,until=,limit=,expected=none")] = None,
    arm: Annotated[list[str] | None, typer.Option(
        help="name=file.yaml: per-step overrides (repeat); the baseline always runs")] = None,
    scorer: Annotated[str, typer.Option(
        help="exact, json, schema:FILE, regex:PATTERN, python:module.fn or judge:ALIAS")]
    = "json",
    rubric: Annotated[str, typer.Option(help="the judge's rubric: text, or @file")] = "",
    max_regression: Annotated[float, typer.Option(
        help="exit 1 when an arm's score or pass rate is this much below the baseline's")] = 0.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report here")]
    = None,
    html: Annotated[Path | None, typer.Option(help="write an HTML page here")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for all the runs")] = 600.0,
    clean: Annotated[str | None, typer.Option(
        help="delete an eval's finished runs (by eval id) instead of running one")] = None,
) -> None:
    """Evaluate a pipeline's arms against its baseline; unchanged calls come from the record."""
    from legato import evals

    legato = legato_client()
    if clean is not None:
        gone, left = evals.clean(legato.store, clean)
        say(f"eval {clean}: deleted {gone} runs" + (f", {left} still running kept" if left
                                                     else ""))
        return
    if not pipeline or (dataset is None) == (from_runs is None):
        fail("give a PIPELINE and exactly one of --dataset FILE.jsonl or --from-runs FILTER")
    try:
        if rubric.startswith("@"):
            rubric = Path(rubric[1:]).read_text()
        items = evals.load_dataset(dataset) if dataset is not None else \
            evals.from_runs(legato.store, from_runs or "")
        arms = [evals.load_arm(text) for text in arm or ()]
        chosen = evals.parse_scorer(scorer, rubric=rubric)
        eval_id, results = evals.run_eval(legato, pipeline, items, arms, chosen,
                                          timeout=timeout)
    except (SpecError, InputError, RunNotFound) as exc:
        fail(str(exc))
    except TimeoutError:
        fail(f"the eval's runs did not finish within {timeout:g}s", EXIT_TIMEOUT)
    report = evals.as_dict(eval_id, pipeline, chosen.name, results, max_regression)
    out.print(evals.table(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    if html is not None:
        html.write_text(evals.render_html(report))
    say(f"eval {eval_id}: {len(items)} items x {len(results)} arms; its runs: "
        f"--from-runs eval={eval_id}, deleted by --clean {eval_id}")
    if report["regressed"]:
        say(f"regressed past {max_regression:g}: {', '.join(report['regressed'])}", style="red")
        raise typer.Exit(EXIT_RUN_FAILED)
