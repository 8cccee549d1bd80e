"""`python -m bench.retention --quick` runs end to end on real parts (its own Redis, fake model
and worker) and its claims hold at tiny sizes: every example pipeline's finished run costs Redis
some bytes, `prune` leaves no key of theirs, and under a steady stream with a short
LEGATO_RUN_TTL memory comes back down once the runs expire (no kind of key is left behind)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from legato.loader import available_pipelines

ROOT = Path(__file__).resolve().parents[2]


def test_bench_retention_quick_measures_and_memory_falls_after_the_ttl(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEGATO_", "BENCH_"))}
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run([sys.executable, "-m", "bench.retention", "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])

    per_run = summary["bytes_per_run"]
    assert set(per_run) == set(available_pipelines(ROOT / "pipelines"))
    for name, cost in per_run.items():
        assert cost["median"] > 0 and cost["max"] >= cost["median"], name
        assert cost["failed"] == 0 and cost["spec"] > 0, name
    assert summary["idem_key_bytes"] > 0 and summary["index_entry_bytes"] > 0
    assert summary["left_after_prune"] == []  # prune took every key of every run

    soak = summary["soak"]
    runs = summary["config"]["soak_runs"]
    assert soak["statuses"] == {"succeeded": runs}
    base, peak, after = soak["baseline"], soak["peak"], soak["memory_after"]
    assert peak > base
    assert after < peak  # the claim: memory goes down once the TTL applies...
    assert after - base < (peak - base) / 2  # ...most of the way back
    assert soak["index_after"] == 0  # the sweeper pruned the runs index
    assert soak["new_key_kinds_after"] == []  # no kind of key stayed behind
    assert soak["flat_samples"] > 0

    doc = out.read_text()
    assert "<!-- retention:begin -->" in doc and "<!-- retention:end -->" in doc
    assert "bytes per run, median" in doc and "flat part: max ÷ min" in doc
    with (tmp_path / "retention.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 10 and int(rows[-1]["submitted"]) == runs
    if importlib.util.find_spec("matplotlib"):  # the chart needs the bench extra
        assert summary["chart"] and (tmp_path / "retention.png").stat().st_size > 1000
