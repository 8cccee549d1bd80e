"""Row 7: rows 1-3 with token streaming on (LEGATO_STREAM=watched, the default) and nobody
watching, against off, in one run; and row 1 with every call streamed and published (always).

Three Legato workers side by side (the same queues and c, each on a Redis database of its own, so
each serves only its own producer; the idle ones only wait on BRPOP), started together afresh for
every repetition and measured in turn, the order rotated each time, so drift on a loaded machine
and where the scheduler keeps a process hit all alike; twice the repetitions of the other rows.
The fake model streams its answer in 8-character events when asked to, as a provider would.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.jobs import LegatoJobs, chain_pipeline, fanout_pipeline
from bench.stack import Stack
from legato.local import processes
from legato.queues import DEFAULT_QUEUES
from legato.settings import Settings, replace

CHAINS = 5  # row 1 here takes 5× the chains of row 1 itself: its gap is the one that is small


def measure(cfg: Any, stack: Stack, jobs: LegatoJobs, *,
            only_overhead: bool = False) -> dict[str, float]:
    """Rows 1-3 once (or row 1 alone), through `jobs`' worker."""
    url = stack.model_url
    chain_n, chain_3 = chain_pipeline(cfg.chain_steps, url), chain_pipeline(cfg.steps, url)
    fan = fanout_pipeline(cfg.fanout, url)
    stack.set_latency(0)
    per_step = []
    for _ in range(CHAINS * cfg.chains_per_run):
        b = jobs.run(chain_n, 1)
        per_step.append(b.elapsed / cfg.chain_steps * 1000)
    if only_overhead:
        return {"overhead": statistics.median(per_step), "failed": 0}
    stack.set_latency(cfg.latency_ms)
    b = jobs.run(chain_3, cfg.jobs)
    failed, tput = b.failed, cfg.jobs / b.elapsed
    stack.set_latency(cfg.fanout_latency_ms)
    b = jobs.run(fan, 1)
    return {"overhead": statistics.median(per_step), "throughput": tput, "fanout": b.elapsed,
            "failed": failed + b.failed}


MODES = {"on": ("watched", 0), "off": ("0", 2), "always": ("always", 3)}  # setting, Redis db


def phase(cfg: Any, stack: Stack, legato: LegatoJobs, res: Any, log: Any) -> None:
    from bench.measure import Row

    reps = 2 * cfg.runs
    log(f"streaming on (nobody watching), off, always: three Legato workers, c={cfg.concurrency},"
        f" {reps} repetitions")
    env = stack.legato_env()
    urls = {mode: stack.legato_url.rsplit("/", 1)[0] + f"/{db}" for mode, (_, db) in
            MODES.items()}
    jobs = {mode: legato if db == 0 else LegatoJobs(urls[mode], replace(Settings.from_env(),
                                                                      redis_url=urls[mode]))
            for mode, (_, db) in MODES.items()}
    seen: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    order = list(MODES)
    try:
        for rep in range(reps):
            # Fresh workers every repetition: a process the scheduler happens to keep beside the
            # fake model or Redis is slower for as long as it lives (two same workers read
            # 0.78 of each other over 8 repetitions), so no mode may keep one.
            workers = {mode: processes.worker(
                f"legato-stream-{mode}", list(DEFAULT_QUEUES),
                env={**env, "LEGATO_REDIS_URL": urls[mode], "LEGATO_STREAM": setting},
                concurrency=cfg.concurrency, log_dir=stack.log_dir)
                for mode, (setting, _) in MODES.items()}
            try:
                for service in workers.values():  # started together: one wait, not three
                    service.start(wait=False)
                for service in workers.values():
                    service.wait_ready(timeout=60)
                stack.set_latency(0)
                for mode in MODES:  # warm up: imports, connections, spec caches
                    jobs[mode].run(chain_pipeline(cfg.steps, stack.model_url), 5)
                for mode in order[rep % 3:] + order[:rep % 3]:
                    rows = "row 1" if mode == "always" else "rows 1-3"
                    log(f"streaming {mode}, run {rep + 1}/{reps}: {rows}")
                    seen[mode].append(measure(cfg, stack, jobs[mode],
                                              only_overhead=mode == "always"))
            finally:
                for service in workers.values():
                    service.stop()
    finally:
        for mode, (_, db) in MODES.items():
            if db != 0:
                jobs[mode].close()
    for mode in MODES:
        res.details["failures"][f"streaming-{mode}/legato"] += sum(
            int(m["failed"]) for m in seen[mode])

    def values(mode: str, key: str) -> list[float]:
        return [m[key] for m in seen[mode]]

    at = next(i for i, r in enumerate(res.rows) if r.key == "fanout") + 1
    res.rows[at:at] = [
        Row("stream_overhead", "7. streaming on vs off: per-step overhead (row 1), nobody "
            "watching", "ms/step", values("on", "overhead"), values("off", "overhead"),
            "streaming off", "on ÷ off", target=1.1, target_text="≤ 1.1×"),
        Row("stream_throughput", "7b. streaming on vs off: I/O throughput (row 2), nobody "
            "watching", "jobs/s", values("on", "throughput"), values("off", "throughput"),
            "streaming off", "on ÷ off", target=0.9, target_text="≥ 0.9", higher_is_met=True),
        Row("stream_fanout", f"7c. streaming on vs off: fan-out of {cfg.fanout} (row 3), nobody "
            "watching", "s", values("on", "fanout"), values("off", "fanout"), "streaming off",
            "on ÷ off", target=1.1, target_text="≤ 1.1×"),
        Row("stream_always", "7d. every call streamed and published vs off: per-step overhead "
            "(row 1)", "ms/step", values("always", "overhead"), values("off", "overhead"),
            "streaming off", "always ÷ off"),
    ]
