"""`python -m bench.scale` (`make bench-scale`): how cost grows with the size of the work.

On the bench's private stack (bench/stack.py), three measurements:

S1. **Long chains.** A chain of `n` llm steps (each reads the one before; 0 ms model) for each n
    in `chains`, fused (one segment task: the default) and `fuse: false` (a task per step, so a
    stage per step), `repeats` runs of each, medians kept. Per run: wall time (the worker's
    clocks: created -> finished) and Redis bytes — the bytes clients sent Redis
    (`total_net_input_bytes`) and the run's keys after (`MEMORY USAGE`). Reported two ways: the
    run's total ÷ n, and the cost of a step added — (cost(n') − cost(n)) ÷ (n' − n) between
    consecutive lengths — with the run's fixed cost (submit, first message, finish) that is
    left. The target, flat (±20 %), is judged on the cost of a step added: it is what grows
    when a step's cost depends on the chain's length (the whole ÷ n also carries the fixed
    cost, which is spread over fewer steps in a short chain).
S2. **A wide fan-out.** A parallel of `fan_sections` sections, each a vote of `fan_n` calls at
    `fan_latency_ms`; the worker may hold `fan_limit` calls in flight (LEGATO_BATCH_CONCURRENCY),
    which stands for the model server's concurrency limit. Reported: ideal (calls × latency ÷
    limit) ÷ measured wall, target ≥ 0.8, and the fake model's highest in-flight count.
S3. **Runs in flight.** `inflight_runs` runs of [llm, wait] submitted at once: the submit rate,
    then, all parked, Redis memory and the worker's RSS; then `signalled` of them are signalled
    (the signal rate) and finish (the rest go with the stack).

Prints a table and a JSON summary last; writes the block between `<!-- scale:begin -->` and
`<!-- scale:end -->` of docs/benchmarks.md and the chart docs/scale.png (with `--quick`, only
when `--out` is given).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench import options, report
from bench.jobs import LegatoJobs, chain_pipeline
from bench.stack import Stack, rss_bytes
from legato import Pipeline
from legato.settings import Settings

BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
ROWS = ("S1. chain, fused: time per step", "S1b. chain, fused: Redis bytes per step",
        "S1c. chain, a task per step: time per step",
        "S1d. chain, a task per step: Redis bytes per step", "S2. fan-out",
        "S3. runs in flight")


@dataclass
class Config:
    chains: list[int] = field(default_factory=lambda: [10, 100, 1000])
    repeats: int = 3  # runs of each chain length (medians kept)
    concurrency: int = 32  # the worker's threads
    fan_sections: int = 10
    fan_n: int = 1000
    fan_latency_ms: float = 200
    fan_limit: int = 100
    inflight_runs: int = 10000
    signalled: int = 500


QUICK = Config(chains=[3, 6], repeats=1, concurrency=8, fan_sections=2, fan_n=4,
               fan_latency_ms=50, fan_limit=8, inflight_runs=20, signalled=20)


def _models(url: str) -> dict[str, Any]:
    return {"fake": {"base_url": url, "model": "fake", "structured_output": "json_object"}}


def _net_in(client: redis.Redis) -> int:
    return int(client.info("stats")["total_net_input_bytes"])


def _run_bytes(client: redis.Redis, store: Any, run_id: str) -> int:
    return sum(client.memory_usage(k) or 0 for k in store.keys.of_run(run_id)
               if client.exists(k))


def chains(stack: Stack, cfg: Config, jobs: LegatoJobs, client: redis.Redis
           ) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {"fused": [], "unfused": []}
    stack.set_latency(0)
    for fused in (True, False):
        for n in cfg.chains:
            spec = chain_pipeline(n, stack.model_url)
            if not fused:
                spec = Pipeline.model_validate({**spec.model_dump(), "fuse": False,
                                                "name": f"{spec.name}_unfused"})
            jobs.run(spec, 1)  # warm: spec pinned and cached, scripts loaded
            walls, sent, stored, ok = [], [], [], 1.0
            for _ in range(cfg.repeats):  # one run at a time: the bytes sent are its own
                before = _net_in(client)
                run_id = jobs.submit(spec, 1)[0]
                jobs.wait([run_id], timeout=1800)
                sent.append(_net_in(client) - before)
                run = jobs.client.store.get_run(run_id)
                walls.append(1000 * ((run.finished_at or 0) - run.created_at))
                stored.append(_run_bytes(client, jobs.client.store, run_id))
                ok = min(ok, float(run.status == "succeeded"))
            w, b, m = (statistics.median(v) for v in (walls, sent, stored))
            out["fused" if fused else "unfused"].append({
                "steps": n, "ms": w, "bytes_in": b, "stored": m, "ms_per_step": w / n,
                "bytes_in_per_step": b / n, "stored_per_step": m / n, "ok": ok})
    for rows in out.values():
        _added(rows)
    return out


def _added(rows: list[dict[str, float]]) -> None:
    """Onto each row after the first: the cost of a step added since the row before
    (`ms_added` etc.); onto the first, the run's fixed cost that is left in time and bytes sent
    (`ms_fixed`, `bytes_in_fixed`; stored bytes are all the steps' own)."""
    for before, row in zip(rows, rows[1:], strict=False):
        steps = row["steps"] - before["steps"]
        for key in ("ms", "bytes_in", "stored"):
            row[f"{key}_added"] = (row[key] - before[key]) / steps
    if len(rows) > 1:
        for key in ("ms", "bytes_in"):
            rows[0][f"{key}_fixed"] = rows[0][key] - rows[0]["steps"] * rows[1][f"{key}_added"]


def fanout(stack: Stack, cfg: Config, jobs: LegatoJobs, _: redis.Redis) -> dict[str, Any]:
    def vote(i: int) -> dict[str, Any]:
        return {"step": {"kind": "llm", "id": f"call{i}", "model": "fake",
                         "prompt": "{{ input.text }}"}, "n": cfg.fan_n}

    sections = [{"kind": "parallel", "id": f"part{i}", "vote": vote(i),
                 "aggregate": {"method": "concat"}} for i in range(cfg.fan_sections)]
    spec = Pipeline.model_validate({
        "name": "bench_wide_fanout", "models": _models(stack.model_url),
        "steps": [{"kind": "parallel", "id": "fan", "sections": sections,
                   "aggregate": {"method": "concat"}}]})
    stack.set_latency(cfg.fan_latency_ms)
    b = jobs.run(spec, 1, timeout=1800)
    calls = cfg.fan_sections * cfg.fan_n
    ideal = calls * cfg.fan_latency_ms / 1000 / cfg.fan_limit
    return {"calls": calls, "wall": b.elapsed, "ideal": ideal, "ratio": ideal / b.elapsed,
            "max_in_flight": stack.fake_stats()["max_in_flight"], "failed": b.failed}


def in_flight(stack: Stack, cfg: Config, jobs: LegatoJobs, client: redis.Redis) -> dict[str, Any]:
    spec = Pipeline.model_validate({
        "name": "bench_in_flight", "models": _models(stack.model_url),
        "steps": [{"kind": "llm", "id": "draft", "model": "fake", "prompt": "{{ input.text }}"},
                  {"kind": "wait", "id": "approve", "description": "a person",
                   "schema": {"type": "object"}}]})
    stack.set_latency(0)
    mem0 = int(client.info("memory")["used_memory"])
    t0 = time.monotonic()
    ids = jobs.submit(spec, cfg.inflight_runs)
    submit_s = time.monotonic() - t0
    store = jobs.client.store
    deadline = time.monotonic() + 1800
    while True:
        pipe = client.pipeline(transaction=False)
        for run_id in ids:
            pipe.hget(store.keys.run(run_id), "status")
        states = pipe.execute()
        if all(s in ("waiting", "succeeded", "failed", "cancelled") for s in states):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{states.count('waiting')} of {len(ids)} runs parked")
        time.sleep(0.5)
    mem = int(client.info("memory")["used_memory"]) - mem0
    worker = stack.workers["legato"]
    rss = rss_bytes(worker.pid) if worker.pid else 0
    some = ids[:cfg.signalled]
    t1 = time.monotonic()
    for run_id in some:
        jobs.client.signal(run_id, "approve", {"ok": True})
    signal_s = time.monotonic() - t1
    b = jobs.wait(some, timeout=1800)
    return {"runs": len(ids), "submit_per_s": len(ids) / submit_s,
            "redis_bytes_per_run": mem / len(ids), "redis_mb": mem / 2**20,
            "worker_rss_mb": rss / 2**20, "signal_per_s": len(some) / signal_s,
            "parked": states.count("waiting"), "signalled": len(some), "failed": b.failed}


def run(cfg: Config) -> dict[str, Any]:
    with Stack() as stack:
        out: dict[str, Any] = {"config": asdict(cfg), "load_before": os.getloadavg()}
        stack.legato_worker(cfg.concurrency,
                            env={"LEGATO_BATCH_CONCURRENCY": str(cfg.fan_limit)})
        jobs = LegatoJobs(stack.legato_url, Settings.from_env())
        client = redis.Redis.from_url(stack.legato_url, decode_responses=True)
        try:
            for key, phase in (("chains", chains), ("fanout", fanout),
                               ("in_flight", in_flight)):
                out[key] = phase(stack, cfg, jobs, client)
                print(f"{key}: {json.dumps(out[key])}", file=sys.stderr, flush=True)
        finally:
            jobs.close()
            client.close()
        out["load_after"] = os.getloadavg()
    return out


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{hi / lo:.2f}× max/min" if lo > 0 else "-"


def _joined(values: list[float], spec: str) -> str:
    return " / ".join(format(v, spec) for v in values) or "-"


def _fixed(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(res: dict[str, Any]) -> str:
    ch, fan, fl = res["chains"], res["fanout"], res["in_flight"]
    lines = ["| row | measured | target |", "|---|---|---|"]
    for key, label in (("fused", "chain, fused"), ("unfused", "chain, a task per step")):
        rows = ch[key]
        sizes = "/".join(str(r["steps"]) for r in rows)
        ms = [r["ms_per_step"] for r in rows]
        sent = [r["bytes_in_per_step"] for r in rows]
        stored = [r["stored_per_step"] for r in rows]
        s = "S1" if key == "fused" else "S1c"
        b = "S1b" if key == "fused" else "S1d"
        spans = " / ".join(f"{a['steps']}→{r['steps']}" for a, r in zip(rows, rows[1:],
                                                                     strict=False))
        added = [[r[f"{k}_added"] for r in rows[1:]] for k in ("ms", "bytes_in", "stored")]
        fixed = rows[0].get("ms_fixed"), rows[0].get("bytes_in_fixed")
        lines.append(
            f"| {s}. {label}: time per step ({sizes} steps) | a step added ({spans}): "
            f"{_joined(added[0], '.2f')} ms (**{_spread(added[0])}**); the run's fixed cost "
            f"{_fixed(fixed[0], '.1f')} ms; whole run ÷ n: {_joined(ms, '.2f')} ms | "
            f"flat ±20 % (a step added) |")
        lines.append(
            f"| {b}. {label}: Redis bytes per step ({sizes} steps) | a step added ({spans}): "
            f"sent {_joined(added[1], ',.0f')} B (**{_spread(added[1])}**), stored "
            f"{_joined(added[2], ',.0f')} B (**{_spread(added[2])}**); the run's fixed cost: "
            f"sent {_fixed(fixed[1], ',.0f')} B; whole run ÷ n: sent {_joined(sent, ',.0f')} B, "
            f"stored {_joined(stored, ',.0f')} B | flat ±20 % (a step added) |")
    lines.append(f"| S2. fan-out: {fan['calls']:,} calls, limit "
                 f"{res['config']['fan_limit']} in flight | {fan['wall']:.1f} s, ideal "
                 f"{fan['ideal']:.1f} s: **{fan['ratio']:.2f}** of the limit (max in flight "
                 f"{fan['max_in_flight']}) | ≥ 0.8 |")
    lines.append(f"| S3. runs in flight: {fl['runs']:,} parked at once | submit "
                 f"{fl['submit_per_s']:.0f} runs/s; Redis +{fl['redis_mb']:.1f} MB "
                 f"({fl['redis_bytes_per_run']:,.0f} B/run); worker RSS "
                 f"{fl['worker_rss_mb']:.0f} MB; signals {fl['signal_per_s']:.0f}/s "
                 f"({fl['signalled']} signalled, finished) | - |")
    failed = sum(1 - r["ok"] for k in ch for r in ch[k]) + fan["failed"] + fl["failed"]
    lb, la = res["load_before"], res["load_after"]
    lines += ["", f"Failed runs: {'none' if not failed else int(failed)}. "
              f"Load average before {lb[0]:.2f}, after {la[0]:.2f} (nproc {os.cpu_count()})."]
    return "\n".join(lines)


def chart(res: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    for key, style in (("fused", "o-"), ("unfused", "s--")):
        rows = res["chains"][key]
        n = [r["steps"] for r in rows]
        a.plot(n, [r["ms_per_step"] for r in rows], style, label=f"{key}: whole run ÷ n")
        a.plot(n[1:], [r["ms_added"] for r in rows[1:]], style, alpha=0.5,
               label=f"{key}: a step added")
        b.plot(n, [r["bytes_in_per_step"] for r in rows], style, label=f"{key}: sent")
        b.plot(n, [r["stored_per_step"] for r in rows], style, alpha=0.5, label=f"{key}: stored")
    for ax, title in ((a, "time per step (ms)"), (b, "Redis bytes per step")):
        ax.set_xscale("log")
        ax.set_xlabel("chain length (steps)")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    p = options.parser("python -m bench.scale", __doc__, Config(), quick="tiny sizes: a minute",
                       skip=("chains",))
    p.add_argument("--chains", type=lambda s: [int(x) for x in s.split(",")],
                   help="chain lengths, comma separated (10,100,1000)")
    args = p.parse_args(argv)
    cfg = options.config(args, QUICK if args.quick else Config())
    res = run(cfg)
    text = table(res)
    print(text)
    out = options.out_path(args)
    if out is not None:
        png = out.with_name("scale.png")
        if chart(res, png):
            text += f"\n\n![cost growth]({png.name})"
        block = f"{BEGIN}\n{text}\n{END}"
        if not out.exists() or BEGIN not in out.read_text():
            doc = out.read_text() if out.exists() else "# Benchmarks\n"
            out.write_text(f"{doc.rstrip()}\n\n## Cost growth (`make bench-scale`)\n\n"
                           f"{BEGIN}\n{END}\n")
        report.write_markdown(out, block, BEGIN, END)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
