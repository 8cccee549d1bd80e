"""The run views without a broker: the waterfall's rows and bars, the HTML page's escaping and
self-containment, the log context filter, and rediss:// URL hardening."""

from __future__ import annotations

import logging
import re

from rich.console import Console

from legato.envelope import RunRecord, StepRecord, Usage
from legato.html_report import render_html, step_inputs
from legato.spec import Llm, Pipeline
from legato.waterfall import decision, timeline, waterfall
from legato.workers import observability, tls

T0 = 1_700_000_000.0


def _run(**kw) -> RunRecord:
    return RunRecord(id="r1", pipeline="triage", spec_hash="h" * 64, status="succeeded",
                     created_at=T0, started_at=T0, finished_at=T0 + 2.0, **kw)


def _steps() -> list[StepRecord]:
    return [
        StepRecord(path="triage", status="succeeded", kind="route", queue="legato.llm",
                   worker="main@a", started_at=T0, ended_at=T0 + 0.5,
                   output={"branch": "billing"}, detail={"by": "model"},
                   usage=Usage(prompt_tokens=10, completion_tokens=2, calls=1)),
        StepRecord(path="triage/billing", status="failed", kind="llm",
                   queue="legato.branch.billing", worker="billing@b", started_at=T0 + 1.0,
                   ended_at=T0 + 2.0, error="HTTP 500 <b>bad</b>", error_type="TransientError"),
    ]


def test_timeline_places_steps_from_the_runs_start():
    spans, total = timeline(_run(), _steps())
    assert total == 2.0
    assert [(s.record.path, s.start, s.took, s.depth) for s in spans] == [
        ("triage", 0.0, 0.5, 0), ("triage/billing", 1.0, 1.0, 1)]


def test_waterfall_shows_the_route_decision_and_bars_in_place():
    console = Console(width=220, record=True)
    console.print(waterfall(_run(), _steps()))
    text = console.export_text()
    assert "→ billing by model" in text and "10+2" in text and "billing@b" in text
    bars = [line.split("│")[8] for line in text.splitlines() if "█" in line]
    first, second = (b.index("█") for b in bars)
    assert first <= 1 and abs((second - first) - 16) <= 1  # the branch starts half-way (of 32)
    assert decision(StepRecord(path="v", status="succeeded", kind="parallel",
                               detail={"votes": 2, "of": 3})) == "majority 2 of 3"


def test_html_escapes_everything_and_loads_nothing():
    steps = _steps()
    steps[0].output = {"branch": "<script>alert(1)</script>"}
    page = render_html(_run(input={"ticket": "</pre><img src=x onerror=alert(1)>"}), steps)
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;" in page and "&lt;b&gt;bad&lt;/b&gt;" in page
    assert not re.search(r"<[^>]*\s(src|href)\s*=", page)
    assert page.count('<g class="span"') == 2


def test_step_inputs_name_the_templates_and_what_they_read():
    spec = Pipeline(name="p", steps=[
        Llm(id="a", model="m", prompt="first {{ input.x }}"),
        Llm(id="b", model="m", prompt="second {{ outputs.a }}")])
    found = step_inputs(spec, {"a": "A's output", "b": "B"}, "b")
    assert found == {"templates": {"prompt": "second {{ outputs.a }}"},
                     "outputs read": {"a": "A's output"}}


def test_log_records_carry_the_run_and_step_while_a_task_runs():
    filt = observability.StepContextFilter()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    observability.on_task_prerun(kwargs={"step": {"run_id": "r9", "path": "a/b[1]"}})
    filt.filter(record)
    assert (record.run_id, record.step) == ("r9", "a/b[1]")
    formatted = observability.StepTextFormatter(logging.Formatter("%(message)s")).format(record)
    assert formatted == "hello run=r9 step=a/b[1]"
    observability.on_task_postrun()
    filt.filter(record)
    assert (record.run_id, record.step) == ("-", "-")
    observability.on_task_prerun(kwargs={"run_id": "r9", "spec_hash": "h"})
    filt.filter(record)
    assert record.step == "(finalize)"
    observability.on_task_postrun()


def test_rediss_urls_get_certificate_verification_unless_they_choose():
    assert tls.verified("redis://:pw@h:6379/0") == "redis://:pw@h:6379/0"
    assert tls.verified("rediss://:pw@h:6380/0") == "rediss://:pw@h:6380/0?ssl_cert_reqs=required"
    assert tls.verified("rediss://h/0?ssl_ca_certs=/ca.pem") == (
        "rediss://h/0?ssl_ca_certs=%2Fca.pem&ssl_cert_reqs=required")
    assert tls.verified("rediss://h/0?ssl_cert_reqs=none") == "rediss://h/0?ssl_cert_reqs=none"
