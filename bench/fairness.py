"""`python -m bench.fairness` (`make bench-fairness`): fair shares under a flood, measured.

On the bench's private stack (bench/stack.py: a private redis-server, the fake model, one `legato
worker` on the threads pool), three measurements:

1. **Flood.** Tenant A submits `a_runs` one-call runs, then tenant B `b_runs`, all before the
   worker starts (so they arrive at the same moment, whatever the producer's own speed).
   Reported: B's wait to start (its first step begun - the worker ready), p50 and p99, with no
   tenants file (every run goes straight into Celery's queue, FIFO: the baseline) and with one
   (admission: A and B weight 1, `capacity` = the worker's threads).
2. **Shares.** A (`heavy`, weight 3) and B (`light`, weight 1) each submit `share_runs` runs,
   interleaved; over the window in which both still had runs waiting, the tokens of the runs
   that ended, per tenant, beside their weights.
3. **Admission's cost.** Redis round trips per run (MONITOR, bench/roundtrips.py: producer and
   worker, `rt_jobs` runs one after another), with and without a tenants file.

Prints a table and, last, a JSON summary; writes the block between `<!-- fairness:begin -->` and
`<!-- fairness:end -->` of docs/benchmarks.md (with `--quick`, only when `--out` is given).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import options
from bench.roundtrips import Monitor
from bench.stack import Stack
from legato import Legato, Llm, Pipeline
from legato.envelope import RunRecord
from legato.settings import Settings

BEGIN, END = "<!-- fairness:begin -->", "<!-- fairness:end -->"
ONE_CALL = Pipeline(name="fair_bench", steps=[Llm(id="a", model="small",
                                                   prompt="{{ input.text }}")])
ROWS = ("F1. B's wait to start, no fairness", "F2. B's wait to start, fair shares",
        "F3. tokens served, A:B at weights 3:1", "F4. admission's Redis round trips")


@dataclass
class Config:
    a_runs: int = 2000
    b_runs: int = 20
    share_runs: int = 400  # each of A and B, for the shares
    concurrency: int = 32  # the worker's threads, and admission's capacity
    latency_ms: float = 100
    rt_jobs: int = 20


QUICK = Config(a_runs=60, b_runs=4, share_runs=24, concurrency=8, latency_ms=50, rt_jobs=2)
FLOOD = {"a": 1.0, "b": 1.0}
SHARES = {"heavy": 3.0, "light": 1.0}  # tenants of their own: the flood's tokens are in the window


def _policy(stack: Stack, cfg: Config) -> Path:
    """One tenants file for every phase: A and B of the flood alike, the shares' two at 3:1."""
    path = stack.log_dir / "tenants.yaml"
    tenants = "".join(f"  {name}: {{weight: {w}}}\n" for name, w in {**FLOOD, **SHARES}.items())
    path.write_text(f"capacity: {cfg.concurrency}\nwindow_seconds: 60\ntenants:\n{tenants}")
    return path


def _client(tenants_file: Path | None) -> Legato:
    if tenants_file is None:
        os.environ.pop("LEGATO_TENANTS_FILE", None)
    else:
        os.environ["LEGATO_TENANTS_FILE"] = str(tenants_file)
    return Legato(Settings.from_env())


def _worker(stack: Stack, cfg: Config, tenants_file: Path | None) -> None:
    env = {"LEGATO_TENANTS_FILE": str(tenants_file)} if tenants_file else {}
    stack.legato_worker(cfg.concurrency, env=env)


def _finals(legato: Legato, run_ids: list[str], timeout: float = 1800) -> list[RunRecord]:
    return [legato.wait(run_id, timeout=timeout) for run_id in run_ids]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def flood(stack: Stack, cfg: Config, tenants_file: Path | None) -> dict[str, Any]:
    """A's burst and B's runs are all submitted before the worker starts: the flood is there at
    once, whatever the producer's own speed. Waits count from the worker's start."""
    stack.stop_worker("legato")
    legato = _client(tenants_file)
    stack.set_latency(cfg.latency_ms)
    a = [legato.submit(ONE_CALL, {"text": f"a {i}"}, tenant="a") for i in range(cfg.a_runs)]
    b = [legato.submit(ONE_CALL, {"text": f"b {i}"}, tenant="b") for i in range(cfg.b_runs)]
    _worker(stack, cfg, tenants_file)
    ready = time.time()
    runs = _finals(legato, a + b)
    waits = [(r.started_at or r.finished_at or ready) - ready for r in runs[len(a):]]
    return {"b_wait_p50": _pct(waits, 0.5), "b_wait_p99": _pct(waits, 0.99),
            "wall": max(r.finished_at or 0 for r in runs) - ready,
            "failed": sum(r.status != "succeeded" for r in runs)}


def shares(stack: Stack, cfg: Config, path: Path) -> dict[str, Any]:
    """On the flood's worker (the same tenants file)."""
    weights = SHARES
    legato = _client(path)
    stack.set_latency(cfg.latency_ms)
    ids = [legato.submit(ONE_CALL, {"text": f"{t} {i}"}, tenant=t)
           for i in range(cfg.share_runs) for t in weights]
    runs = _finals(legato, ids)
    # The window: from the first start until one tenant's last run was admitted (after that,
    # only one tenant had runs waiting, and shares say nothing).
    start = min(r.started_at or r.created_at for r in runs)
    until = min(max(r.admitted_at or 0 for r in runs if r.tenant == t) for t in weights)
    served = {t: sum(r.usage.total_tokens for r in runs if r.tenant == t and
                     r.finished_at and start <= r.finished_at <= until) for t in weights}
    total = sum(served.values()) or 1
    return {"window_s": until - start, "tokens": served, "share_a": served["heavy"] / total,
            "weight_share_a": weights["heavy"] / sum(weights.values()),
            "failed": sum(r.status != "succeeded" for r in runs)}


def round_trips(stack: Stack, cfg: Config, tenants_file: Path | None) -> dict[str, Any]:
    """Per run, one after another, on the flood's worker: every client's commands on Legato's
    database (producer, worker, and the worker's sweeper passes meanwhile)."""
    legato = _client(tenants_file)
    stack.set_latency(0)
    legato.wait(legato.submit(ONE_CALL, {"text": "warm"}), timeout=60)  # scripts loaded
    with Monitor(stack.redis.port, stack.log_dir / "monitor-fair.log") as mon:
        for i in range(cfg.rt_jobs):
            legato.wait(legato.submit(ONE_CALL, {"text": f"rt {i}"}, tenant="rt"), timeout=60)
    t = mon.traffic(0, set())
    return {"per_run": t.round_trips / cfg.rt_jobs,
            "by_command": {k: v / cfg.rt_jobs for k, v in t.by_command.most_common(12)}}


def run(cfg: Config) -> dict[str, Any]:
    with Stack() as stack:  # two worker starts: one without a tenants file, one with
        fair = _policy(stack, cfg)
        out: dict[str, Any] = {"config": asdict(cfg), "load_before": os.getloadavg()}
        out["baseline"] = flood(stack, cfg, None)
        out["rt_plain"] = round_trips(stack, cfg, None)
        out["fair"] = flood(stack, cfg, fair)
        out["shares"] = shares(stack, cfg, fair)
        out["rt_admitted"] = round_trips(stack, cfg, fair)
        out["load_after"] = os.getloadavg()
    return out


def table(res: dict[str, Any]) -> str:
    c, base, fair, sh = res["config"], res["baseline"], res["fair"], res["shares"]
    rt_on, rt_off = res["rt_admitted"]["per_run"], res["rt_plain"]["per_run"]
    flood_text = f"A {c['a_runs']} runs then B {c['b_runs']}, c={c['concurrency']}, " \
                 f"{c['latency_ms']:g} ms"
    lines = [
        "| measurement | value | beside |",
        "|---|---|---|",
        f"| {ROWS[0]} ({flood_text}) | p50 {base['b_wait_p50']:.2f} s, p99 "
        f"{base['b_wait_p99']:.2f} s | all runs done in {base['wall']:.1f} s |",
        f"| {ROWS[1]} (same, capacity {c['concurrency']}) | p50 {fair['b_wait_p50']:.2f} s, "
        f"p99 {fair['b_wait_p99']:.2f} s | all runs done in {fair['wall']:.1f} s |",
        f"| {ROWS[2]} ({c['share_runs']} runs each) | A {sh['share_a']:.1%} of "
        f"{sum(sh['tokens'].values())} tokens over {sh['window_s']:.1f} s, both waiting | "
        f"weights: A "
        f"{sh['weight_share_a']:.0%} |",
        f"| {ROWS[3]} per one-call run | {rt_on:.1f} with a tenants file | "
        f"{rt_off:.1f} without (+{rt_on - rt_off:.1f}) |",
    ]
    failed = base["failed"] + fair["failed"] + sh["failed"]
    load = ", ".join(f"{x:.2f}" for x in res["load_before"])
    lines += ["", f"Failed runs: {failed or 'none'}. Load average before: {load}; after: "
              f"{', '.join(f'{x:.2f}' for x in res['load_after'])} (nproc {os.cpu_count()})."]
    return "\n".join(lines)


def write(out: Path, text: str) -> None:
    doc = out.read_text() if out.exists() else ""
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = f"{doc.rstrip()}\n\n## Fair shares (`make bench-fairness`)\n\n{block}\n"
    out.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    p = options.parser("python -m bench.fairness", __doc__, Config(),
                       quick="tiny sizes: a minute, not ten")
    args = p.parse_args(argv)
    cfg = options.config(args, QUICK if args.quick else Config())
    res = run(cfg)
    text = table(res)
    print(text)
    out = options.out_path(args)
    if out is not None:
        write(out, text)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

