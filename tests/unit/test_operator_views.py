"""The operator's views without a broker: control characters escaped, markup never parsed, runs
and the waterfall fitted to the width without cutting ids (rendered by rich as the CLI does)."""

from __future__ import annotations

from rich.console import Console

from legato.envelope import RunRecord, StepRecord
from legato.report import clean, run_summary, runs_table
from legato.waterfall import waterfall

T0 = 1_700_000_000.0
HOSTILE = "[/bold] [red]x[/] \x1b[2J\x1b]0;t\x07 \x9b31m \u202erev \x00 :warning:\r"


def _render(renderable: object, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def _run(run_id: str, **kw) -> RunRecord:
    return RunRecord(id=run_id, pipeline=kw.pop("pipeline", "support_triage"), spec_hash="h",
                     status=kw.pop("status", "failed"), created_at=T0, started_at=T0,
                     finished_at=T0 + 1.5, **kw)


def test_clean_escapes_controls_and_keeps_text():
    assert clean("a\x1b[31mb\x07") == "a\\x1b[31mb\\x07"
    assert clean("\x9b2J \u202e \x7f \x00") == "\\x9b2J \\u202e \\x7f \\x00"
    assert clean("line\n\ttab") == "line\n\ttab"
    assert clean("line\n\ttab", newlines=False) == "line\\n\\ttab"
    assert clean("ünïcode — 日本 [b]") == "ünïcode — 日本 [b]"


def test_summary_and_runs_show_markup_and_escapes_as_data():
    run = _run("f" * 32, error=HOSTILE, pipeline="[bold]p[/bold]")
    for renderable in (run_summary(run), runs_table([run])):
        for width in (60, 200):
            text = _render(renderable, width)
            assert "\x1b" not in text and "\x9b" not in text and "\u202e" not in text
            assert "[bold]p[/bold]" in text and "[/bold]" in text
            assert "\\x1b[2J" in text and ":warning:" in text


def test_runs_show_full_ids_at_any_width():
    runs = [_run(f"{i:x}" * 32, error="boom " * 30) for i in range(3)]
    for width in (40, 80, 120, 250):
        text = _render(runs_table(runs), width)
        for r in runs:
            assert r.id in text, (width, text)
        assert max(len(line) for line in text.splitlines()) <= width
    assert "┃ pipeline" in _render(runs_table(runs), 150)  # a table when it fits
    assert "┃" not in _render(runs_table(runs), 80)  # two lines a run when it does not


def _steps() -> list[StepRecord]:
    long_name = "a_rather_long_step_identifier_for_the_billing_branch"
    return [
        StepRecord(path="triage", status="succeeded", kind="route", queue="legato.control",
                   worker="main@a-long-worker-hostname.example.internal", started_at=T0,
                   ended_at=T0 + 0.5, output={"branch": "billing"}, detail={"by": "model"}),
        StepRecord(path=f"triage/{long_name}", status="failed", kind="llm",
                   queue="legato.branch.billing", worker="billing@b", started_at=T0 + 0.5,
                   ended_at=T0 + 1.5, error=HOSTILE),
    ]


def test_the_waterfall_fits_80_columns_and_cuts_no_names():
    for width in (80, 100):
        text = _render(waterfall(_run("r" * 32), _steps()), width)
        assert max(len(line) for line in text.splitlines()) <= width, text
        for name in ("triage", "a_rather_long_step_identifier_for_the_billing_branch",
                     "main@a-long-worker-hostname.example.internal", "legato.branch.billing",
                     "billing by model"):
            assert name in text, (name, text)
        assert "█" in text and "\x1b" not in text and "\\x1b[2J" in text
        assert "┃" not in text  # no table to break
    wide = _render(waterfall(_run("r" * 32), _steps()), 220)
    assert "main@a-long-worker-hostname.example.internal" in wide and "┃ queue" in wide
