"""The measurements, each against its baseline in the same run, repeated, medians kept.

Phase one runs a Legato worker and a raw-Celery worker side by side (threads pool, the same
concurrency; the idle one only waits on BRPOP) and interleaves the two for every repetition, so
drift on a noisy machine hits both. Phase two restarts them one at a time, bigger, for the memory
reading.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench import streaming, transports
from bench.jobs import LegatoJobs, RawJobs, chain_pipeline, fanout_pipeline
from bench.roundtrips import Monitor
from bench.stack import CpuMeter, Stack, rss_bytes, thread_count
from legato.local import processes
from legato.queues import DEFAULT_QUEUES


@dataclass
class Config:
    runs: int = 3
    concurrency: int = 100  # threads per worker process, and calls in flight
    chain_steps: int = 20  # 1. per-step overhead
    chains_per_run: int = 5  # sequential chains per repetition (their median is the run's value)
    jobs: int = 300  # 2. throughput (and the peer)
    latency_ms: float = 200
    steps: int = 3
    fanout: int = 1000  # 3. fan-out
    fanout_latency_ms: float = 100
    rt_jobs: int = 20  # 4. round trips
    mem_calls: int = 500  # 5. memory
    mem_latency_ms: float = 8000
    peer: bool = True  # 6. LangGraph

    @property
    def ideal(self) -> float:
        return self.concurrency / (self.latency_ms / 1000) / self.steps


@dataclass
class Row:
    key: str
    what: str
    unit: str
    legato: list[float]
    baseline: list[float]
    baseline_name: str
    ratio_name: str  # how the ratio reads, e.g. "Legato ÷ raw"
    invert: bool = False  # ratio = baseline ÷ Legato (speed-ups of a time)
    target: float | None = None
    target_text: str = ""
    higher_is_met: bool = False  # the ratio must be >= target (else <=)
    notes: str = ""

    @property
    def legato_median(self) -> float:
        return statistics.median(self.legato) if self.legato else float("nan")

    @property
    def baseline_median(self) -> float:
        return statistics.median(self.baseline) if self.baseline else float("nan")

    @property
    def ratio(self) -> float:
        a, b = self.legato_median, self.baseline_median
        if self.invert:
            a, b = b, a
        return a / b if b else float("nan")

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio != self.ratio:  # NaN: not measured
            return None
        return self.ratio >= self.target if self.higher_is_met else self.ratio <= self.target


@dataclass
class Results:
    config: Config
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_all(cfg: Config, stack: Stack) -> Results:
    res = Results(cfg)
    d = res.details
    legato = LegatoJobs(stack.legato_url)
    raw = RawJobs(stack.raw_url, stack.model_url)
    try:
        _phase_one(cfg, stack, legato, raw, res)
        _phase_host(cfg, stack, legato, res)
        streaming.phase(cfg, stack, legato, res, _log)
        _phase_memory(cfg, stack, legato, raw, res)
    finally:
        legato.close()
        raw.close()
    d["fake_model"] = stack.model_url
    return res


def _phase_one(cfg: Config, stack: Stack, legato: LegatoJobs, raw: RawJobs, res: Results) -> None:
    c = cfg.concurrency
    _log(f"starting workers: Legato and raw Celery, threads pool, c={c}")
    lw = stack.legato_worker(c)
    rw = stack.raw_worker(c)
    url = stack.model_url
    chain_n = chain_pipeline(cfg.chain_steps, url)
    chain_3 = chain_pipeline(cfg.steps, url)
    fan = fanout_pipeline(cfg.fanout, url)

    stack.set_latency(0)  # warm up both: imports, connections, spec caches
    legato.run(chain_3, 5)
    legato.run(chain_n, 1)
    raw.noop_chains(cfg.chain_steps, 2)
    raw.call_chains(cfg.steps, 5)

    per_step: dict[str, list[float]] = {"legato": [], "raw": []}
    tput: dict[str, list[float]] = {"legato": [], "raw": [], "peer": [], "peer_aiohttp": []}
    cpu: dict[str, list[float]] = {"legato": [], "raw": []}
    fan_s: dict[str, list[float]] = {"legato": [], "raw": []}
    rts: dict[str, list[float]] = {"legato": [], "raw": []}
    d = res.details
    d.update(failures=Counter(), max_in_flight={}, rt_breakdown={},
             load_before=os.getloadavg())

    for rep in range(cfg.runs):
        _log(f"run {rep + 1}/{cfg.runs}: per-step overhead ({cfg.chains_per_run} chains of "
             f"{cfg.chain_steps} steps each)")
        stack.set_latency(0)
        one_rep: dict[str, list[float]] = {"legato": [], "raw": []}
        for _ in range(cfg.chains_per_run):  # one chain at a time, alternating; median kept
            b = legato.run(chain_n, 1)
            one_rep["legato"].append(b.elapsed / cfg.chain_steps * 1000)
            d["failures"]["overhead/legato"] += b.failed
            b = raw.noop_chains(cfg.chain_steps, 1)
            one_rep["raw"].append(b.elapsed / cfg.chain_steps * 1000)
            d["failures"]["overhead/raw"] += b.failed
        per_step["legato"].append(statistics.median(one_rep["legato"]))
        per_step["raw"].append(statistics.median(one_rep["raw"]))

        _log(f"run {rep + 1}: throughput, {cfg.jobs} jobs x {cfg.steps} calls at "
             f"{cfg.latency_ms:g} ms")
        stack.set_latency(cfg.latency_ms)
        with CpuMeter(lw.pid) as m:
            b = legato.run(chain_3, cfg.jobs)
        tput["legato"].append(cfg.jobs / b.elapsed)
        cpu["legato"].append(m.total / cfg.jobs * 1000)
        d["failures"]["throughput/legato"] += b.failed
        d["max_in_flight"].setdefault("legato", []).append(stack.fake_stats()["max_in_flight"])
        d.setdefault("cpu_split", {}).setdefault("legato", []).append((m.user, m.system, m.wall))
        stack.set_latency(cfg.latency_ms)
        with CpuMeter(rw.pid) as m:
            b = raw.call_chains(cfg.steps, cfg.jobs)
        tput["raw"].append(cfg.jobs / b.elapsed)
        cpu["raw"].append(m.total / cfg.jobs * 1000)
        d["failures"]["throughput/raw"] += b.failed
        d["max_in_flight"].setdefault("raw", []).append(stack.fake_stats()["max_in_flight"])
        d["cpu_split"].setdefault("raw", []).append((m.user, m.system, m.wall))
        if cfg.peer:
            for client, key in (("httpx", "peer"), ("aiohttp", "peer_aiohttp")):
                peer = _peer(stack, cfg, d, client)
                if peer is not None:
                    tput[key].append(peer["jobs_per_s"])
                    d.setdefault(f"{key}_runs", []).append(peer)

        _log(f"run {rep + 1}: fan-out of {cfg.fanout} calls at {cfg.fanout_latency_ms:g} ms")
        stack.set_latency(cfg.fanout_latency_ms)
        b = legato.run(fan, 1)
        fan_s["legato"].append(b.elapsed)
        d["failures"]["fanout/legato"] += b.failed
        b = raw.sleep_chord(cfg.fanout, cfg.fanout_latency_ms / 1000)
        fan_s["raw"].append(b.elapsed)
        d["failures"]["fanout/raw"] += b.failed

        _log(f"run {rep + 1}: Redis round trips, {cfg.rt_jobs} jobs x {cfg.steps} steps")
        stack.set_latency(0)
        calls = cfg.rt_jobs * cfg.steps
        with Monitor(stack.redis.port, stack.log_dir / "monitor-legato.log") as mon:
            legato.run(chain_3, cfg.rt_jobs)
        t = mon.traffic(0, {legato.poller_addr()})
        rts["legato"].append(t.round_trips / calls)
        d["rt_breakdown"]["legato"] = (t, calls)
        with Monitor(stack.redis.port, stack.log_dir / "monitor-raw.log") as mon:
            raw.call_chains(cfg.steps, cfg.rt_jobs)
        t = mon.traffic(1, {raw.poller_addr()})
        rts["raw"].append(t.round_trips / calls)
        d["rt_breakdown"]["raw"] = (t, calls)

    d["load_after"] = os.getloadavg()
    stack.stop_worker("legato")
    stack.stop_worker("raw")
    steps, lat = cfg.steps, cfg.latency_ms
    res.rows += [
        Row("overhead", f"1. per-step overhead ({cfg.chain_steps}-step chain, 0 ms model)",
            "ms/step", per_step["legato"], per_step["raw"], "raw Celery no-op chain",
            "Legato ÷ raw", target=1.5, target_text="≤ 1.5×",
            notes="Legato's time includes submit (validate, pin spec, run record) and closing the "
                  "run"),
        Row("throughput", f"2. I/O throughput ({steps}-step chain, {lat:g} ms, c={c})",
            "jobs/s", tput["legato"], [cfg.ideal] * len(tput["legato"]),
            f"ideal c÷latency÷steps = {cfg.ideal:.1f}", "Legato ÷ ideal", target=0.9,
            target_text="≥ 0.9", higher_is_met=True),
        Row("throughput_raw", "2b. raw Celery, same chain (threads, sync httpx)",
            "jobs/s", tput["raw"], [cfg.ideal] * len(tput["raw"]),
            f"ideal {cfg.ideal:.1f}", "raw ÷ ideal"),
        Row("throughput_vs_raw", "2c. Legato vs raw Celery, same chain", "jobs/s",
            tput["legato"], tput["raw"], "raw Celery", "Legato ÷ raw"),
        Row("cpu", "2d. worker CPU per job, during 2", "ms CPU/job", cpu["legato"], cpu["raw"],
            "raw Celery", "Legato ÷ raw"),
        Row("fanout", f"3. fan-out: parallel of {cfg.fanout} calls at "
            f"{cfg.fanout_latency_ms:g} ms", "s", fan_s["legato"], fan_s["raw"],
            f"raw chord of {cfg.fanout} sleeps", "raw ÷ Legato (speed-up)", invert=True,
            target=2.0, target_text="≥ 2×", higher_is_met=True),
        Row("roundtrips", f"4. Redis round trips per step ({steps}-step chain)", "trips/step",
            rts["legato"], rts["raw"], "raw Celery chain", "Legato ÷ raw"),
    ]
    if cfg.peer:
        res.rows.append(Row(
            "peer", f"6. peer: LangGraph {steps}-node graph, {cfg.jobs} jobs, {c} at once",
            "jobs/s", tput["legato"], tput["peer"], "LangGraph (asyncio, httpx.AsyncClient)",
            "Legato ÷ LangGraph",
            notes="" if tput["peer"] else "LangGraph did not run: " + d.get("peer_error", "")))
        res.rows.append(Row(
            "peer_aiohttp", "6b. peer: the same LangGraph graph on aiohttp", "jobs/s",
            tput["legato"], tput["peer_aiohttp"], "LangGraph (asyncio, aiohttp)",
            "Legato ÷ LangGraph",
            notes="" if tput["peer_aiohttp"] else "did not run: " + d.get("peer_error", "")))


def _peer(stack: Stack, cfg: Config, details: dict[str, Any],
          client: str) -> dict[str, Any] | None:
    stack.set_latency(cfg.latency_ms)
    argv = [sys.executable, "-m", "bench.peer", "--url", stack.model_url, "--jobs",
            str(cfg.jobs), "--concurrency", str(cfg.concurrency), "--client", client]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        details["peer_error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
        _log(f"LangGraph peer failed: {details['peer_error']}")
        return None
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _phase_host(cfg: Config, stack: Stack, legato: LegatoJobs, res: Results) -> None:
    """What bounds row 2: the same chain on a worker host (two processes of c/2 threads, the
    same c calls in flight in all), and the model transport alone at c calls in flight."""
    c, half = cfg.concurrency, max(1, cfg.concurrency // 2)
    chain_3 = chain_pipeline(cfg.steps, stack.model_url)
    _log(f"host: two Legato workers of {half} threads; the transport alone at {c} in flight")
    pair = [processes.worker(f"legato-host-{i}", list(DEFAULT_QUEUES), env=stack.legato_env(),
                             concurrency=half, log_dir=stack.log_dir).start(timeout=60)
            for i in range(2)]
    host: list[float] = []
    alone: list[float] = []
    try:
        stack.set_latency(0)
        legato.run(chain_3, 10)  # warm up both
        for _ in range(cfg.runs):
            stack.set_latency(cfg.latency_ms)
            b = legato.run(chain_3, cfg.jobs)
            res.details["failures"]["host/legato"] += b.failed
            host.append(cfg.jobs / b.elapsed)
    finally:
        for service in pair:
            service.stop()
    for _ in range(cfg.runs):
        stack.set_latency(cfg.latency_ms)
        row = transports.in_fresh_process("threads-loop-aiohttp", stack.model_url, c,
                                          rounds=3 * cfg.steps, seconds=20, timeout=300)
        if "error" not in row:
            alone.append(row["calls_per_s"] / cfg.steps)  # as jobs of `steps` calls
    at = next(i for i, r in enumerate(res.rows) if r.key == "cpu") + 1
    res.rows[at:at] = [
        Row("host", f"2e. the same chain on a worker host: 2 processes × {half} threads",
            "jobs/s", host, [cfg.ideal] * len(host), f"ideal {cfg.ideal:.1f}", "host ÷ ideal"),
        Row("ceiling", f"2f. the model transport alone, {c} calls in flight, no orchestration",
            "jobs/s", alone, [cfg.ideal] * len(alone), f"ideal {cfg.ideal:.1f}",
            "transport ÷ ideal", notes="calls/s ÷ steps; `threads-loop-aiohttp` of "
            "bench/transports.py, the path Legato's workers use"),
    ]


def _phase_memory(cfg: Config, stack: Stack, legato: LegatoJobs, raw: RawJobs,
                  res: Results) -> None:
    n = cfg.mem_calls
    one = chain_pipeline(1, stack.model_url)
    mem: dict[str, list[float]] = {"legato": [], "raw": []}
    idle: dict[str, float] = {}
    inflight: dict[str, list[int]] = {"legato": [], "raw": []}
    threads: dict[str, int] = {}
    for who in ("legato", "raw"):
        _log(f"memory: {who} worker, threads pool c={n}, {n} calls in flight")
        service = stack.legato_worker(n) if who == "legato" else stack.raw_worker(n)
        assert service.pid is not None
        stack.set_latency(0)  # warm up: connections, imports
        if who == "legato":
            legato.run(one, 4)
        else:
            raw.wait_ids(raw.calls(4))
        time.sleep(0.5)
        idle[who] = rss_bytes(service.pid) / 2**20
        for _ in range(cfg.runs):
            stack.set_latency(cfg.mem_latency_ms)
            ids = legato.submit(one, n) if who == "legato" else raw.calls(n)
            peak, seen, deadline = 0.0, 0, time.monotonic() + cfg.mem_latency_ms / 1000
            while time.monotonic() < deadline:
                seen = max(seen, stack.fake_stats()["in_flight"])
                peak = max(peak, rss_bytes(service.pid) / 2**20)
                if seen >= n:
                    break
                time.sleep(0.05)
            plateau = time.monotonic() + min(1.0, cfg.mem_latency_ms / 4000)
            while time.monotonic() < plateau:  # readings on the plateau, for a second
                peak = max(peak, rss_bytes(service.pid) / 2**20)
                time.sleep(0.1)
            threads[who] = thread_count(service.pid)
            mem[who].append(peak)
            inflight[who].append(seen)
            if who == "legato":
                legato.wait(ids)
            else:
                raw.wait_ids(ids)
        stack.stop_worker(who)
    res.details.update(mem_idle=idle, mem_in_flight=inflight, mem_threads=threads)
    res.rows.insert(next(i for i, r in enumerate(res.rows) if r.key == "roundtrips") + 1, Row(
        "memory", f"5. worker RSS with {n} model calls in flight (c={n})", "MiB",
        mem["legato"], mem["raw"], "raw Celery worker", "Legato ÷ raw",
        notes=f"idle: Legato {idle['legato']:.0f} MiB, raw {idle['raw']:.0f} MiB; "
              f"in flight reached: Legato {max(inflight['legato'])}, raw {max(inflight['raw'])}"))
