"""The bench harnesses run end to end at tiny sizes on real parts and produce every row (no
timing checks)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from legato.loader import available_pipelines

ROOT = Path(__file__).resolve().parents[2]
ROWS = ("1. per-step overhead", "2. I/O throughput", "2b. raw Celery", "2c. Legato vs raw",
        "2d. worker CPU", "2e. the same chain on a worker host", "2f. the model transport alone",
        "3. fan-out", "7. streaming on vs off", "7b. streaming on vs off",
        "7c. streaming on vs off", "7d. every call streamed", "4. Redis round trips",
        "5. worker RSS", "6. peer", "6b. peer")


def quick(module: str, out: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m <module> --quick --out <out>` on a clean environment; asserts it succeeded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEGATO_", "BENCH_"))}
    proc = subprocess.run([sys.executable, "-m", module, "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON line a bench prints last."""
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(600)  # --quick starts ten worker processes; a loaded machine is slow at it
def test_bench_quick_produces_every_row_the_doc_and_the_chart(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    proc = quick("bench", out, timeout=480)
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
    from bench.fairness import ROWS as FAIRNESS_ROWS

    out = tmp_path / "benchmarks.md"
    proc = quick("bench.fairness", out, timeout=420)
    doc = out.read_text()
    assert "<!-- fairness:begin -->" in doc and "Failed runs: none" in doc, doc
    assert all(name in doc for name in FAIRNESS_ROWS)
    res = summary(proc)
    rt_on, rt_off = res["rt_admitted"], res["rt_plain"]
    assert rt_on["per_run"] > rt_off["per_run"] > 0  # admission costs round trips, counted
    assert rt_on["by_command"]["EVALSHA"] > rt_off["by_command"]["EVALSHA"]
    assert all(n > 0 for n in res["shares"]["tokens"].values())


def test_bench_scale_quick_produces_every_row(tmp_path: Path) -> None:
    from bench.scale import ROWS as SCALE_ROWS

    out = tmp_path / "benchmarks.md"
    proc = quick("bench.scale", out, timeout=420)
    doc = out.read_text()
    assert "<!-- scale:begin -->" in doc and "Failed runs: none" in doc, doc
    assert all(name in doc for name in SCALE_ROWS)
    res = summary(proc)
    assert [r["steps"] for r in res["chains"]["fused"]] == res["config"]["chains"]
    assert all(r["bytes_in_per_step"] > 0 for k in ("fused", "unfused")
               for r in res["chains"][k])
    assert res["in_flight"]["parked"] == res["config"]["inflight_runs"]  # all parked at once
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "scale.png").stat().st_size > 1000


def test_bench_retention_quick_measures_and_memory_falls_after_the_ttl(tmp_path: Path) -> None:
    """At tiny sizes on real parts, retention's claims hold: every example pipeline's finished
    run costs Redis some bytes, `prune` leaves no key of theirs, and under a steady stream with
    a short LEGATO_RUN_TTL memory comes back down once the runs expire (no kind of key is left
    behind)."""
    out = tmp_path / "benchmarks.md"
    res = summary(quick("bench.retention", out, timeout=180))

    per_run = res["bytes_per_run"]
    assert set(per_run) == set(available_pipelines(ROOT / "pipelines"))
    for name, cost in per_run.items():
        assert cost["median"] > 0 and cost["max"] >= cost["median"], name
        assert cost["failed"] == 0 and cost["spec"] > 0, name
    assert res["idem_key_bytes"] > 0 and res["index_entry_bytes"] > 0
    assert res["left_after_prune"] == []  # prune took every key of every run

    soak = res["soak"]
    runs = res["config"]["soak_runs"]
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
        assert res["chart"] and (tmp_path / "retention.png").stat().st_size > 1000


def test_bench_transports_with_a_journal_makes_its_two_redis_trips_a_call(redis_server) -> None:
    from bench.transports import one
    from legato.local import processes

    client = redis_server.client()
    client.delete("b:steps", "b:leases")
    with processes.fake_model() as fake:
        url = processes.fake_model_url(fake)
        for transport in ("threads-loop-aiohttp", "asyncio-aiohttp"):
            before = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
            row = one(transport, url, 4, 3, 30, journal=redis_server.url)
            after = client.info("commandstats")["cmdstat_evalsha"]["calls"]
            assert row["transport"] == f"{transport}+journal" and row["calls"] == 12
            assert after - before >= 2 * 12  # a begin and an end a call
    assert client.hlen("b:steps") == 4 * 3 and client.zcard("b:leases") == 0
