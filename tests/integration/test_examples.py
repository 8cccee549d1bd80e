"""Every example pipeline under pipelines/ runs with its example input on the fake model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from legato.loader import available_pipelines

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = available_pipelines(ROOT / "pipelines")


def test_every_pattern_has_an_example():
    kinds = {step.split("kind:")[1].split()[0].strip("{},")
             for name in EXAMPLES
             for step in (ROOT / "pipelines" / f"{name}.yaml").read_text().split("\n")
             if "kind:" in step}
    assert {"llm", "tool", "route", "parallel", "orchestrate", "evaluate", "agent",
            "wait"} <= kinds


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_on_the_fake_model(name, legato, fake):
    payload = json.loads((ROOT / "pipelines" / f"{name}.input.json").read_text())
    run_id = legato.submit(name, payload)
    signals = ROOT / "pipelines" / f"{name}.signals.json"  # what a person sends a wait step
    for step, data in (json.loads(signals.read_text()) if signals.exists() else {}).items():
        deadline = time.monotonic() + 30
        while legato.status(run_id).status != "waiting" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert legato.status(run_id).status == "waiting"
        assert legato.signal(run_id, step, data, by="test").state == "resumed"
    run = legato.wait(run_id, timeout=60)
    assert run.status == "succeeded", run.error
    assert run.output not in (None, "")
    assert run.usage.calls >= 1
