"""The bench harness runs end to end at tiny sizes and produces every row (no timing checks)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROWS = ("1. per-step overhead", "2. I/O throughput", "2b. raw Celery", "2c. Legato vs raw",
        "2d. worker CPU", "2e. the same chain on a worker host", "2f. the model transport alone",
        "3. fan-out", "7. streaming on vs off", "7b. streaming on vs off",
        "7c. streaming on vs off", "4. Redis round trips", "5. worker RSS", "6. peer",
        "6b. peer")


@pytest.mark.timeout(600)  # --quick starts ten worker processes; a loaded machine is slow at it
def test_bench_quick_produces_every_row_the_doc_and_the_chart(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEGATO_", "BENCH_"))}
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ROWS:
        assert name in proc.stdout, (name, proc.stdout)
    doc = out.read_text()
    assert "<!-- bench:begin -->" in doc and "<!-- bench:end -->" in doc
    assert all(name in doc for name in ROWS)
    assert "nproc" in doc and "celery" in doc and "redis server" in doc
    assert "Failed jobs: none" in doc, doc
    if importlib.util.find_spec("matplotlib"):  # the chart needs the bench extra
        assert (tmp_path / "benchmarks.png").stat().st_size > 1000


def test_bench_fairness_quick_produces_every_row(tmp_path: Path) -> None:
    import json

    from bench.fairness import ROWS as FAIRNESS_ROWS

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEGATO_", "BENCH_"))}
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run([sys.executable, "-m", "bench.fairness", "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = out.read_text()
    assert "<!-- fairness:begin -->" in doc and "Failed runs: none" in doc, doc
    assert all(name in doc for name in FAIRNESS_ROWS)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    rt_on, rt_off = res["rt_admitted"], res["rt_plain"]
    assert rt_on["per_run"] > rt_off["per_run"] > 0  # admission costs round trips, counted
    assert rt_on["by_command"]["EVALSHA"] > rt_off["by_command"]["EVALSHA"]
    assert all(n > 0 for n in res["shares"]["tokens"].values())


def test_bench_scale_quick_produces_every_row(tmp_path: Path) -> None:
    import json

    from bench.scale import ROWS as SCALE_ROWS

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEGATO_", "BENCH_"))}
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run([sys.executable, "-m", "bench.scale", "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = out.read_text()
    assert "<!-- scale:begin -->" in doc and "Failed runs: none" in doc, doc
    assert all(name in doc for name in SCALE_ROWS)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["steps"] for r in res["chains"]["fused"]] == res["config"]["chains"]
    assert all(r["bytes_in_per_step"] > 0 for k in ("fused", "unfused")
               for r in res["chains"][k])
    assert res["in_flight"]["parked"] == res["config"]["inflight_runs"]  # all parked at once
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "scale.png").stat().st_size > 1000
