"""Seeing a run: `legato show` (rich waterfall), `legato report --html` (a self-contained page,
opened in real headless Chromium: its DOM and a screenshot), and batch submits with progress."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.test_cli import legato_cli
from tests.png import colours, read_png

GREEN = bytes((0x2E, 0x9D, 0x4F))  # a succeeded step's bar in the HTML timeline


@pytest.fixture(scope="module")
def triage_run(legato_module) -> str:
    legato, fake = legato_module
    fake.script({"rules": [{"match": {"system_contains": "classify support tickets"},
                            "reply": {"branch": "billing"}}]})
    run_id = legato.submit("support_triage", {"ticket": "I was charged twice for March"})
    assert legato.wait(run_id, timeout=30).status == "succeeded"
    return run_id


@pytest.fixture(scope="module")
def parallel_run(legato_module) -> str:
    legato, _ = legato_module
    run_id = legato.submit("stakeholders", {"change": "We move to a four-day week."})
    assert legato.wait(run_id, timeout=30).status == "succeeded"
    return run_id


@pytest.fixture(scope="module")
def legato_module(stack_env, workers, fake_model):
    from legato.client import Legato
    from legato.settings import Settings
    from tests.conftest import FakeModel

    fake = FakeModel(fake_model)
    fake.reset()
    yield Legato(Settings.from_env()), fake
    fake.reset()


def test_show_draws_a_waterfall_with_queues_workers_tokens_and_the_route(stack_env, triage_run):
    shown = legato_cli("show", triage_run, env=stack_env)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "timeline (0 –" in text
    assert "→ billing by model" in text  # the route's decision
    assert "legato.branch.billing" in text and "branches@" in text  # the branch's own worker
    assert "legato.llm" in text and "main@" in text
    assert re.search(r"triage\s*│\s*route\s*│\s*succeeded", text)
    assert re.search(r"\b\d+\+\d+\b", text)  # tokens in+out on model steps
    assert "█" in text  # the bars


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed: `make install` installs it (apt-get install "
                    "chromium)")
    return found


def _headless(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    argv = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90,
                          env={**os.environ, "HOME": str(tmp_path)})


def test_html_report_is_self_contained_and_renders_in_chromium(stack_env, legato_module,
                                                                parallel_run, tmp_path):
    legato, _ = legato_module
    page = tmp_path / "run.html"
    made = legato_cli("report", parallel_run, "--html", str(page), env=stack_env)
    assert made.returncode == 0, made.stderr
    html = page.read_text()
    # Self-contained: nothing is loaded from anywhere.
    assert not re.search(r"""(src|href)\s*=|@import|url\(|<script|<link""", html, re.I)
    steps = legato.steps(parallel_run)
    assert len(steps) == 4  # three sections and the aggregate

    dom = _headless("--dump-dom", page.as_uri(), tmp_path=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout
    assert rendered.count('<g class="span"') == len(steps)
    for step in steps:
        assert f'data-path="{step.path}"' in rendered
    # Each step shows its input (the template it rendered) and its output.
    customers = re.search(r'<section class="step" id="step-views/customers".*?</section>',
                          rendered, re.S)
    assert customers is not None
    assert "how does this change affect customers" in customers.group(0)
    by_path = {s.path: s for s in steps}
    assert json.dumps(by_path["views/customers"].output)[1:40] in customers.group(0) or \
        str(by_path["views/customers"].output)[:40] in customers.group(0)
    assert "outputs read" not in customers.group(0)  # a section reads no earlier output
    assert "stakeholders" in rendered and "succeeded" in rendered
    unknown = legato_cli("report", "no-such-run", "--html", str(tmp_path / "x.html"),
                         env=stack_env)
    assert unknown.returncode == 2 and "no run 'no-such-run'" in unknown.stderr

    shot = tmp_path / "run.png"
    taken = _headless(f"--screenshot={shot}", "--window-size=1200,900", page.as_uri(),
                      tmp_path=tmp_path)
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    assert shot.stat().st_size > 20_000
    width, height, _ = read_png(shot)
    assert (width, height) == (1200, 900)
    seen = colours(shot)
    top, count = seen.most_common(1)[0]
    assert count < 0.95 * sum(seen.values()), "the page is (almost) one colour"
    assert len(seen) > 20
    assert seen[GREEN] > 10, "no succeeded bars in the timeline"


def test_batch_submit_with_progress_and_refusal(stack_env, legato_module, tmp_path):
    legato, _ = legato_module
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"text": f"batch item {i}"}) + "\n" for i in range(6)))
    done = legato_cli("submit", "summarize", "--input", f"@{inputs}", "--wait", "--json",
                      env=stack_env)
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    assert len(records) == 6 and {r["status"] for r in records} == {"succeeded"}
    assert [r["input"]["text"] for r in records] == [f"batch item {i}" for i in range(6)]
    assert "submitting to summarize" in done.stderr and "6/6" in done.stderr
    assert "completed" in done.stderr

    before = len(legato.runs(limit=1000))
    inputs.write_text('{"text": "ok"}\n{"text": "fine"}\n{"words": 3}\n')
    refused = legato_cli("submit", "summarize", "--input", f"@{inputs}", env=stack_env)
    assert refused.returncode == 2
    assert "input 3:" in refused.stderr and "text: Field required" in refused.stderr
    assert len(legato.runs(limit=1000)) == before  # nothing enqueued
