"""Row 7: rows 1-3 with token streaming on (LEGATO_STREAM=1) against off (the default), in one run.

One Legato worker at a time (the same queues, the same c), restarted with the other setting for
every repetition and the order swapped each time, so drift on a loaded machine hits both. The
fake model streams its answer in 8-character events when asked to, as a provider would.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.jobs import LegatoJobs, chain_pipeline, fanout_pipeline
from bench.stack import Stack

MODES = {"on": {"LEGATO_STREAM": "1"}, "off": {"LEGATO_STREAM": "0"}}


def measure(cfg: Any, stack: Stack, legato: LegatoJobs, mode: str) -> dict[str, float]:
    """Rows 1-3 once, on a fresh worker with streaming `mode`."""
    url = stack.model_url
    chain_n, chain_3 = chain_pipeline(cfg.chain_steps, url), chain_pipeline(cfg.steps, url)
    fan = fanout_pipeline(cfg.fanout, url)
    stack.legato_worker(cfg.concurrency, env=MODES[mode])
    try:
        stack.set_latency(0)
        legato.run(chain_3, 5)  # warm up: imports, connections, spec caches
        per_step = []
        for _ in range(cfg.chains_per_run):
            b = legato.run(chain_n, 1)
            per_step.append(b.elapsed / cfg.chain_steps * 1000)
        stack.set_latency(cfg.latency_ms)
        b = legato.run(chain_3, cfg.jobs)
        failed = b.failed
        tput = cfg.jobs / b.elapsed
        stack.set_latency(cfg.fanout_latency_ms)
        b = legato.run(fan, 1)
        return {"overhead": statistics.median(per_step), "throughput": tput,
                "fanout": b.elapsed, "failed": failed + b.failed}
    finally:
        stack.stop_worker("legato")


def phase(cfg: Any, stack: Stack, legato: LegatoJobs, res: Any, log: Any) -> None:
    from bench.measure import Row

    seen: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for rep in range(cfg.runs):
        order = ("on", "off") if rep % 2 == 0 else ("off", "on")
        for mode in order:
            log(f"streaming {mode}, run {rep + 1}/{cfg.runs}: rows 1-3")
            seen[mode].append(measure(cfg, stack, legato, mode))
    for mode in ("on", "off"):
        res.details["failures"][f"streaming-{mode}/legato"] += sum(
            int(m["failed"]) for m in seen[mode])

    def values(mode: str, key: str) -> list[float]:
        return [m[key] for m in seen[mode]]

    at = next(i for i, r in enumerate(res.rows) if r.key == "fanout") + 1
    res.rows[at:at] = [
        Row("stream_overhead", "7. streaming on vs off: per-step overhead (row 1)", "ms/step",
            values("on", "overhead"), values("off", "overhead"), "streaming off",
            "on ÷ off", target=1.1, target_text="≤ 1.1×"),
        Row("stream_throughput", "7b. streaming on vs off: I/O throughput (row 2)", "jobs/s",
            values("on", "throughput"), values("off", "throughput"), "streaming off",
            "on ÷ off", target=0.9, target_text="≥ 0.9", higher_is_met=True),
        Row("stream_fanout", f"7c. streaming on vs off: fan-out of {cfg.fanout} (row 3)", "s",
            values("on", "fanout"), values("off", "fanout"), "streaming off", "on ÷ off",
            target=1.1, target_text="≤ 1.1×"),
    ]
