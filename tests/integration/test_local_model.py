"""End to end against a real model: `legato demo` with llama.cpp's server and SmolLM2-135M.

This is what `make demo` runs: a private Redis, the local model, two workers, Flower, and one job
per example pipeline — every one must succeed against the real model, schema-constrained steps
(the vote's enum, the router's branch, the planner's subtasks) included.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.local_model
def test_demo_runs_every_example_pipeline_against_the_local_model():
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEGATO_")}
    env["COLUMNS"] = "120"
    result = subprocess.run([sys.executable, "-m", "legato.cli", "demo", "--no-keep"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "SmolLM2-135M on llama.cpp" in out
    names = sorted(p.stem for p in (ROOT / "pipelines").glob("*.yaml") if p.stem != "models")
    for name in names:
        assert re.search(rf"{name} · succeeded · [\d.]+s · [1-9]\d* model calls", out), name
    vote = re.search(r'"sentiment": "(\w+)"', out)
    assert vote and vote.group(1) in ("positive", "negative", "neutral")
    assert "Flower: http://127.0.0.1:" in out
