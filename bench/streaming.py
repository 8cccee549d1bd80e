"""Row 7: rows 1-3 with token streaming on (LEGATO_STREAM=1) against off (the default), in one run.

Two Legato workers side by side (the same queues and c, each on a Redis database of its own, so
each serves only its own producer; the idle one only waits on BRPOP), started together once, and
the two measured in turn in every repetition, the order swapped each time, so drift on a loaded
machine hits both. The fake model streams its answer in 8-character events when asked to, as a
provider would.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.jobs import LegatoJobs, chain_pipeline, fanout_pipeline
from bench.stack import Stack
from legato.local import processes
from legato.queues import DEFAULT_QUEUES
from legato.settings import Settings, replace


def measure(cfg: Any, stack: Stack, jobs: LegatoJobs) -> dict[str, float]:
    """Rows 1-3 once, through `jobs`' worker."""
    url = stack.model_url
    chain_n, chain_3 = chain_pipeline(cfg.chain_steps, url), chain_pipeline(cfg.steps, url)
    fan = fanout_pipeline(cfg.fanout, url)
    stack.set_latency(0)
    per_step = []
    for _ in range(cfg.chains_per_run):
        b = jobs.run(chain_n, 1)
        per_step.append(b.elapsed / cfg.chain_steps * 1000)
    stack.set_latency(cfg.latency_ms)
    b = jobs.run(chain_3, cfg.jobs)
    failed, tput = b.failed, cfg.jobs / b.elapsed
    stack.set_latency(cfg.fanout_latency_ms)
    b = jobs.run(fan, 1)
    return {"overhead": statistics.median(per_step), "throughput": tput, "fanout": b.elapsed,
            "failed": failed + b.failed}


def phase(cfg: Any, stack: Stack, legato: LegatoJobs, res: Any, log: Any) -> None:
    from bench.measure import Row

    off_url = stack.legato_url.rsplit("/", 1)[0] + "/2"
    log(f"streaming on vs off: two Legato workers, c={cfg.concurrency}")
    env = stack.legato_env()
    workers = {
        "on": processes.worker("legato-stream-on", list(DEFAULT_QUEUES),
                               env={**env, "LEGATO_STREAM": "1"}, concurrency=cfg.concurrency,
                               log_dir=stack.log_dir),
        "off": processes.worker("legato-stream-off", list(DEFAULT_QUEUES),
                                env={**env, "LEGATO_REDIS_URL": off_url, "LEGATO_STREAM": "0"},
                                concurrency=cfg.concurrency, log_dir=stack.log_dir),
    }
    jobs = {"on": legato, "off": LegatoJobs(off_url, replace(Settings.from_env(),
                                                              redis_url=off_url))}
    seen: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    try:
        for service in workers.values():  # started together: one wait, not two
            service.start(wait=False)
        for service in workers.values():
            service.wait_ready(timeout=60)
        stack.set_latency(0)
        for mode in ("on", "off"):  # warm up: imports, connections, spec caches
            jobs[mode].run(chain_pipeline(cfg.steps, stack.model_url), 5)
        for rep in range(cfg.runs):
            for mode in (("on", "off") if rep % 2 == 0 else ("off", "on")):
                log(f"streaming {mode}, run {rep + 1}/{cfg.runs}: rows 1-3")
                seen[mode].append(measure(cfg, stack, jobs[mode]))
    finally:
        jobs["off"].close()
        for service in workers.values():
            service.stop()
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
