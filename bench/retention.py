"""`python -m bench.retention`: what a finished run costs Redis, and whether memory stays flat.

Two measurements on the bench's private stack (bench/stack.py: a private redis-server, the fake
model server, one `legato worker` on the threads pool serving Legato's default queues and every
queue the example pipelines name):

1. Bytes per finished run, for each example pipeline in pipelines/ with its `*.input.json`: N runs
   with LEGATO_RUN_TTL=0 (nothing expires), then `MEMORY USAGE <key> SAMPLES 0` summed over every
   key whose name holds the run's id (what `SCAN MATCH *<id>*` finds: the record, the journal,
   outputs, attempts, budget, vote tallies, the extras set); the pipeline's pinned spec
   (`legato:spec:<hash>`, one per pipeline content, shared by all its runs) and an idempotency
   key (when a producer gives one) apart. Then `prune(older_than=0)` deletes them all, and the
   script checks that no key of theirs is left.
2. A soak: `summarize` runs submitted at a steady rate, with a short LEGATO_RUN_TTL and the
   worker's sweeper pruning the runs index every LEGATO_PRUNE_SECONDS, sampling Redis
   `used_memory`, the key count and the index size every few seconds. Memory climbs for about
   the TTL, then stays flat while the stream goes on, and falls back once it stops.

Writes the block between `<!-- retention:begin -->` and `<!-- retention:end -->` of
docs/benchmarks.md, the chart docs/retention.png and the samples docs/retention.csv (with
`--quick`, nothing unless `--out` is given). The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import math
import os
import re
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from bench.stack import ROOT, Stack
from legato.client import Legato
from legato.loader import available_pipelines
from legato.queues import DEFAULT_QUEUES
from legato.settings import Settings

PIPELINES = ROOT / "pipelines"
BEGIN, END = "<!-- retention:begin -->", "<!-- retention:end -->"
TERMINAL = ("succeeded", "failed", "cancelled")
SOAK_PIPELINE = "summarize"


@dataclass
class Config:
    per_pipeline: int = 20  # runs of each example pipeline for the bytes per run
    soak_runs: int = 20_000
    rate: float = 25.0  # soak runs submitted per second
    ttl: float = 20.0  # LEGATO_RUN_TTL during the soak
    prune_seconds: float = 5.0  # LEGATO_PRUNE_SECONDS during the soak
    sweep_seconds: float = 5.0  # LEGATO_SWEEP_SECONDS during the soak
    sample_seconds: float = 2.0
    concurrency: int = 16  # worker threads
    settle_seconds: float = 1.0  # after a batch finishes, before reading its keys

    @property
    def flat_from(self) -> float:
        """Seconds after the first soak submit from which memory should be flat: a finished
        run lives `ttl`, its index entry up to a prune interval (and a sweep) longer."""
        return self.ttl + self.prune_seconds + self.sweep_seconds + 2.0


QUICK: dict[str, Any] = dict(per_pipeline=2, soak_runs=400, rate=30.0, ttl=4.0,
                             prune_seconds=1.0, sweep_seconds=0.5, sample_seconds=0.5,
                             concurrency=8, settle_seconds=0.3)


def _log(message: str) -> None:
    print(f"[retention {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pipeline_queues(pipelines_dir: Path = PIPELINES) -> list[str]:
    """Legato's default queues and every `queue:` the example pipelines name."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "queue" and isinstance(value, str):
                    found.add(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted(pipelines_dir.glob("*.yaml")):
        walk(yaml.safe_load(path.read_text()))
    return [*DEFAULT_QUEUES, *sorted(found - set(DEFAULT_QUEUES))]


def examples(pipelines_dir: Path = PIPELINES) -> list[str]:
    return [n for n in available_pipelines(pipelines_dir)
            if (pipelines_dir / f"{n}.input.json").exists()]


def _input(name: str) -> Any:
    return json.loads((PIPELINES / f"{name}.input.json").read_text())


def _signals(name: str) -> dict[str, Any]:
    """What a person sends the pipeline's wait steps (`<name>.signals.json`), by step."""
    path = PIPELINES / f"{name}.signals.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _used_memory(r: Any) -> int:
    return int(r.info("memory")["used_memory"])


def _all_keys(r: Any) -> list[str]:
    return list(r.scan_iter(count=1000))


def _memory_usage(r: Any, keys: list[str]) -> dict[str, int]:
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return {k: int(v or 0) for k, v in zip(keys, pipe.execute(), strict=True)}


def _kind(key: str, run_id: str) -> str:
    """Which part of a run a key is (see pipeline/keys.py)."""
    if key.endswith(f"{{{run_id}}}"):
        return "record"
    if ":vote:" in key:
        return "votes"
    if ":budget:" in key:
        return "budget"
    for suffix, kind in ((":steps", "journal"), (":outputs", "outputs"),
                         (":attempts", "attempts"), (":keys", "extras")):
        if key.endswith(suffix):
            return kind
    return "other"


_ID = re.compile(r"[0-9a-f]{32}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def key_pattern(key: str) -> str:
    """A key's name with run ids, Celery ids and spec/idempotency digests as <id>: keys by
    their kind."""
    key = re.sub(r"(:spec:|:idem:)\S+$", r"\1<id>", key)
    return _ID.sub("<id>", _UUID.sub("<id>", key))


def _celery_keys(r: Any) -> set[str]:
    """Celery's own keys (the chord bookkeeping of parallel steps: `celery-taskset-meta-*`)."""
    return set(r.scan_iter(match="celery-*", count=1000))


# -- 1. bytes per finished run -----------------------------------------------------------------


@dataclass
class PipelineCost:
    name: str
    runs: int
    failed: int
    bytes: list[int]  # per run: MEMORY USAGE summed over the run's keys
    keys: list[int]  # per run: how many keys
    by_kind: dict[str, list[int]]  # per run, bytes of each kind of key
    spec_bytes: int
    celery_keys: int  # Celery's keys the batch left (chord markers of parallel steps), in all
    celery_bytes: int  # ... and their bytes, in all (they expire by Celery's TTL)

    @property
    def celery_per_run(self) -> float:
        return self.celery_bytes / self.runs

    @property
    def median(self) -> float:
        return statistics.median(self.bytes)

    @property
    def max(self) -> int:
        return max(self.bytes)


@dataclass
class Costs:
    pipelines: list[PipelineCost] = field(default_factory=list)
    index_entry_bytes: float = 0.0  # legato:runs, per member
    idem_key_bytes: int = 0
    shared: dict[str, list[int]] = field(default_factory=dict)  # pattern -> [count, bytes]
    celery_ttl_max: int = 0  # the longest TTL among Celery's keys the runs left
    pruned: int = 0
    freed_by_prune: int = 0  # INFO used_memory before - after the prune, the worker idle
    dataset_freed_by_prune: int = 0  # the same of used_memory_dataset (no connection buffers)
    left_after_prune: list[str] = field(default_factory=list)

    @property
    def mean_sum(self) -> float:
        """Mean bytes per run over every run measured (MEMORY USAGE sums)."""
        every = [b for p in self.pipelines for b in p.bytes]
        return sum(every) / len(every) if every else 0.0


def measure_costs(cfg: Config, stack: Stack, names: list[str]) -> Costs:
    env = {"LEGATO_RUN_TTL": "0"}
    os.environ.update(env)
    stack.legato_worker(cfg.concurrency, queues=pipeline_queues(), env=env)
    from bench.jobs import LegatoJobs

    jobs = LegatoJobs(stack.legato_url)
    r = jobs.poller
    out = Costs()
    ids: dict[str, list[str]] = {}
    try:
        warm = jobs.client.submit(SOAK_PIPELINE, _input(SOAK_PIPELINE))
        jobs.wait([warm], timeout=120)
        failed: dict[str, int] = {}
        celery: dict[str, set[str]] = {}
        for name in names:
            _log(f"bytes per run: {cfg.per_pipeline} runs of {name}")
            payload = _input(name)
            before_keys = _celery_keys(r)
            ids[name] = [jobs.client.submit(name, payload) for _ in range(cfg.per_pipeline)]
            for run_id in ids[name]:  # a wait step's signal, sent at once (kept till it waits)
                for step, data in _signals(name).items():
                    jobs.client.signal(run_id, step, data, by="bench")
            failed[name] = jobs.wait(ids[name], timeout=300).failed
            time.sleep(cfg.settle_seconds)  # closing steps after the last status change
            celery[name] = _celery_keys(r) - before_keys
        every_id = {i for v in ids.values() for i in v}
        celery_usage = _memory_usage(r, sorted(set().union(*celery.values())))
        pipe = r.pipeline(transaction=False)
        for key in celery_usage:
            pipe.ttl(key)
        out.celery_ttl_max = max((int(t) for t in pipe.execute()), default=0)
        keys = _all_keys(r)
        usage = _memory_usage(r, keys)
        owner: dict[str, list[str]] = collections.defaultdict(list)
        for key in keys:
            found = _ID.findall(key)
            run_id = next((i for i in found if i in every_id), None)
            if run_id is not None:
                owner[run_id].append(key)
            elif ":spec:" not in key and warm not in key and key not in celery_usage:
                count_bytes = out.shared.setdefault(key_pattern(key), [0, 0])
                count_bytes[0] += 1
                count_bytes[1] += usage[key]
        for name in names:
            spec_hash = r.hget(jobs.client.store.keys.run(ids[name][0]), "spec_hash")
            spec_bytes = int(r.memory_usage(jobs.client.store.keys.spec(spec_hash), samples=0)
                             or 0)
            per_run, per_keys = [], []
            by_kind: dict[str, list[int]] = collections.defaultdict(list)
            for run_id in ids[name]:
                mine = owner[run_id]
                per_run.append(sum(usage[k] for k in mine))
                per_keys.append(len(mine))
                kinds: dict[str, int] = collections.Counter()
                for k in mine:
                    kinds[_kind(k, run_id)] += usage[k]
                for kind, b in kinds.items():
                    by_kind[kind].append(b)
            out.pipelines.append(PipelineCost(
                name, len(ids[name]), failed[name], per_run, per_keys, dict(by_kind), spec_bytes,
                len(celery[name]), sum(celery_usage.get(k, 0) for k in celery[name])))
        index = jobs.client.store.keys.runs
        out.index_entry_bytes = (int(r.memory_usage(index, samples=0) or 0)
                                 / max(1, int(r.zcard(index))))
        idem = f"bench-retention-{time.time_ns()}"
        idem_run = jobs.client.submit(SOAK_PIPELINE, _input(SOAK_PIPELINE), idempotency_key=idem)
        jobs.wait([idem_run], timeout=120)
        idem_key = jobs.client.store.keys.idem(idem)
        out.idem_key_bytes = int(r.memory_usage(idem_key, samples=0) or 0)
        # `legato prune --older-than 0s`: every finished run goes, with all its keys.
        before = r.info("memory")
        out.pruned = jobs.client.store.prune(older_than=0)
        time.sleep(cfg.settle_seconds)
        after = r.info("memory")
        out.freed_by_prune = int(before["used_memory"]) - int(after["used_memory"])
        out.dataset_freed_by_prune = (int(before["used_memory_dataset"])
                                      - int(after["used_memory_dataset"]))
        pruned_ids = every_id | {warm, idem_run}
        out.left_after_prune = sorted(k for k in _all_keys(r)
                                      if k == idem_key
                                      or any(i in pruned_ids for i in _ID.findall(k)))
    finally:
        jobs.close()
        stack.stop_worker("legato")
    return out


# -- 2. the soak -------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the first soak submit
    submitted: int
    finished: int
    used_memory: int
    used_memory_rss: int
    dataset: int  # used_memory_dataset: the keys' share
    clients: int  # mem_clients_normal: connections' buffers
    keys: int
    index: int  # ZCARD legato:runs
    active: int  # ZCARD legato:active: runs not finished


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.submitted = 0
        self.pending: list[str] = []
        self.statuses: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []

    @property
    def finished(self) -> int:
        return sum(self.statuses.values())


def _sampler(url: str, keys: Any, every: float, t0: float, c: _Counters,
             samples: list[Sample], stop: threading.Event) -> None:
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        while True:
            pipe = r.pipeline(transaction=False)
            pipe.info("memory")
            pipe.dbsize()
            pipe.zcard(keys.runs)
            pipe.zcard(keys.active)
            info, dbsize, index, active = pipe.execute()
            samples.append(Sample(round(time.monotonic() - t0, 3), c.submitted, c.finished,
                                  int(info["used_memory"]), int(info["used_memory_rss"]),
                                  int(info["used_memory_dataset"]),
                                  int(info.get("mem_clients_normal", 0)),
                                  int(dbsize), int(index), int(active)))
            if stop.wait(every):
                return
    finally:
        r.close()


def _checker(url: str, keys: Any, c: _Counters, stop: threading.Event) -> None:
    """Reads each run's outcome soon after it finishes (before its keys expire)."""
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        while not stop.wait(0.25):
            with c.lock:
                pending = list(c.pending)
            if not pending:
                continue
            pipe = r.pipeline(transaction=False)
            for run_id in pending:
                pipe.hmget(keys.run(run_id), "status", "created_at", "finished_at")
            done: set[str] = set()
            for run_id, (status, created, finished) in zip(pending, pipe.execute(),
                                                           strict=True):
                if status in TERMINAL:
                    c.statuses[status] += 1
                    c.latencies.append(float(finished) - float(created))
                    done.add(run_id)
                elif status is None:  # expired before it was seen: cannot happen with ttl >> 0.25 s
                    c.statuses["gone before read"] += 1
                    done.add(run_id)
            with c.lock:
                c.pending = [i for i in c.pending if i not in done]
    finally:
        r.close()


@dataclass
class Soak:
    cfg: dict[str, Any]
    samples: list[Sample]
    marks: dict[str, float]  # "25%".. "100%": when that share of the runs had been submitted
    statuses: dict[str, int]
    latency_median: float
    latency_p99: float
    elapsed_submit: float
    baseline: int  # used_memory just before the first submit
    keys_before: dict[str, int]
    keys_after: dict[str, int]  # key pattern -> count, after the drain
    memory_after: int

    def at(self, t: float) -> Sample:
        return min(self.samples, key=lambda s: abs(s.t - t))

    @property
    def flat(self) -> list[Sample]:
        lo, hi = self.cfg["flat_from"], self.marks["100%"]
        return [s for s in self.samples if lo <= s.t <= hi]

    @property
    def peak(self) -> Sample:
        return max(self.samples, key=lambda s: s.used_memory)

    def summary(self) -> dict[str, Any]:
        flat = self.flat
        mem = [s.used_memory for s in flat]
        slope = float("nan")
        if len(flat) >= 3:
            slope = statistics.linear_regression([s.t for s in flat], mem).slope
        at = {k: self.at(t).used_memory for k, t in self.marks.items()}
        return {
            "runs": self.cfg["soak_runs"],
            "submitted_per_s": self.cfg["soak_runs"] / self.elapsed_submit,
            "statuses": self.statuses,
            "latency_median_s": self.latency_median,
            "latency_p99_s": self.latency_p99,
            "baseline": self.baseline,
            "memory_at": at,
            "peak": self.peak.used_memory,
            "peak_t": self.peak.t,
            "flat_samples": len(flat),
            "flat_min": min(mem) if mem else None,
            "flat_max": max(mem) if mem else None,
            "flat_ratio": max(mem) / min(mem) if mem else None,
            "flat_slope_bytes_per_min": slope * 60,
            "flat_index_max": max((s.index for s in flat), default=None),
            "flat_keys_max": max((s.keys for s in flat), default=None),
            "memory_after": self.memory_after,
            "keys_after": sum(self.keys_after.values()),
            "index_after": self.samples[-1].index,
            "new_key_kinds_after": sorted(set(self.keys_after) - set(self.keys_before)),
        }


def soak(cfg: Config, stack: Stack) -> Soak:
    env = {"LEGATO_RUN_TTL": repr(cfg.ttl), "LEGATO_PRUNE_SECONDS": repr(cfg.prune_seconds),
           "LEGATO_SWEEP_SECONDS": repr(cfg.sweep_seconds)}
    os.environ.update(env)
    stack.legato_worker(cfg.concurrency, queues=pipeline_queues(), env=env)
    client = Legato(Settings.from_env())
    keys = client.store.keys
    r = redis.Redis.from_url(stack.legato_url, decode_responses=True)
    payload = _input(SOAK_PIPELINE)
    c = _Counters()
    samples: list[Sample] = []
    stop_sampler, stop_checker = threading.Event(), threading.Event()
    try:
        for _ in range(3):  # warm up: imports, connections, the spec cache
            client.wait(client.submit(SOAK_PIPELINE, payload), timeout=120)
        time.sleep(cfg.ttl + cfg.prune_seconds + cfg.sweep_seconds + 1)  # the warm-up expires
        keys_before = collections.Counter(key_pattern(k) for k in _all_keys(r))
        baseline = _used_memory(r)
        _log(f"soak: {cfg.soak_runs} runs of {SOAK_PIPELINE} at {cfg.rate:g}/s, "
             f"LEGATO_RUN_TTL={cfg.ttl:g}, LEGATO_PRUNE_SECONDS={cfg.prune_seconds:g}")
        t0 = time.monotonic()
        threads = [threading.Thread(target=_sampler, daemon=True,
                                    args=(stack.legato_url, keys, cfg.sample_seconds, t0, c,
                                          samples, stop_sampler)),
                   threading.Thread(target=_checker, daemon=True,
                                    args=(stack.legato_url, keys, c, stop_checker))]
        for thread in threads:
            thread.start()
        quarters = {math.ceil(cfg.soak_runs * q / 4): f"{25 * q}%" for q in range(1, 5)}
        marks: dict[str, float] = {}
        next_log = t0 + 60
        for i in range(cfg.soak_runs):
            delay = t0 + i / cfg.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            run_id = client.submit(SOAK_PIPELINE, payload)
            with c.lock:
                c.pending.append(run_id)
                c.submitted += 1
            if c.submitted in quarters:
                marks[quarters[c.submitted]] = time.monotonic() - t0
            if time.monotonic() > next_log:
                next_log += 60
                last = samples[-1] if samples else None
                _log(f"soak: {c.submitted} submitted, {c.finished} finished"
                     + (f", used_memory {last.used_memory / 2**20:.2f} MiB, index {last.index}"
                        if last else ""))
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 300
        while c.pending and time.monotonic() < deadline:
            time.sleep(0.2)
        _log(f"soak: all submitted in {elapsed:.0f} s; draining (TTL + prune + sweep)")
        drain = time.monotonic() + cfg.ttl + cfg.prune_seconds + cfg.sweep_seconds + 2
        while time.monotonic() < drain or (r.zcard(keys.runs) and time.monotonic() < drain + 60):
            time.sleep(0.2)
        time.sleep(cfg.sample_seconds * 1.5)  # a sample or two after
        stop_checker.set()
        stop_sampler.set()
        for thread in threads:
            thread.join(10)
        keys_after = collections.Counter(key_pattern(k) for k in _all_keys(r))
        memory_after = _used_memory(r)
        lat = sorted(c.latencies) or [float("nan")]
        return Soak({**asdict(cfg), "flat_from": cfg.flat_from}, samples, marks,
                    dict(c.statuses), statistics.median(lat),
                    lat[min(len(lat) - 1, int(len(lat) * 0.99))], elapsed, baseline,
                    dict(keys_before), dict(keys_after), memory_after)
    finally:
        stop_checker.set()
        stop_sampler.set()
        r.close()
        client.store.redis.close()
        stack.stop_worker("legato")


# -- the report --------------------------------------------------------------------------------


def _mib(b: float | None) -> str:
    return "—" if b is None else f"{b / 2**20:.2f}"


def costs_table(costs: Costs) -> str:
    kinds = ("record", "journal", "outputs")
    lines = ["| pipeline | runs | keys per run | bytes per run, median | max | "
             + " | ".join(f"{k}, median" for k in kinds)
             + " | other keys, median | spec (shared, once) | Celery's chord keys per run |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(kinds) + "---:|---:|---:|"]
    for p in costs.pipelines:
        rest = [sum(v[i] for k, v in p.by_kind.items() if k not in kinds)
                for i in range(p.runs)]
        cells = [f"{statistics.median(p.by_kind.get(k, [0])):.0f}" for k in kinds]
        failed = f" ({p.failed} failed)" if p.failed else ""
        lines.append(f"| {p.name} | {p.runs}{failed} | {statistics.median(p.keys):g} | "
                     f"{p.median:.0f} | {p.max} | " + " | ".join(cells)
                     + f" | {statistics.median(rest):.0f} | {p.spec_bytes} | "
                     + (f"{p.celery_keys / p.runs:g} key, {p.celery_per_run:.0f} bytes |"
                        if p.celery_keys else "none |"))
    return "\n".join(lines)


def soak_table(s: Soak) -> str:
    m = s.summary()
    lines = ["| reading | used_memory (MiB) | runs index | keys |", "|---|---:|---:|---:|",
             f"| before the first run | {_mib(m['baseline'])} | | |"]
    for k, t in s.marks.items():
        at = s.at(t)
        lines.append(f"| at {k} of the runs (t = {t:.0f} s) | {_mib(at.used_memory)} | "
                     f"{at.index} | {at.keys} |")
    flat = s.flat
    if flat:
        lines += [
            f"| flat part (t = {s.cfg['flat_from']:.0f}–{s.marks['100%']:.0f} s, {len(flat)} "
            f"samples): min | {_mib(m['flat_min'])} | {min(x.index for x in flat)} | "
            f"{min(x.keys for x in flat)} |",
            f"| flat part: max | {_mib(m['flat_max'])} | {max(x.index for x in flat)} | "
            f"{max(x.keys for x in flat)} |",
            f"| flat part: max ÷ min | {m['flat_ratio']:.3f} | | |",
        ]
    last = s.samples[-1]
    lines.append(f"| after the stream stopped and the TTL passed (t = {last.t:.0f} s) | "
                 f"{_mib(m['memory_after'])} | {last.index} | {m['keys_after']} |")
    return "\n".join(lines)


def _setup(cfg: Config, costs: Costs | None, s: Soak | None, redis_version: str) -> str:
    from bench.report import machine

    info = machine(redis_version)
    mach = ", ".join(f"{k} {info[k]}" for k in ("nproc", "cpu", "python", "celery",
                                                 "redis-py", "redis server"))
    lines = [f"Machine and versions: {mach}.", ""]
    lines.append(f"- Worker: one `legato worker`, threads pool, concurrency {cfg.concurrency}, "
                 f"on {', '.join(pipeline_queues())}; the fake model at 0 ms.")
    if costs is not None:
        lines.append(
            f"- Bytes per run: {cfg.per_pipeline} runs of each pipeline with its example input, "
            "LEGATO_RUN_TTL=0; `MEMORY USAGE <key> SAMPLES 0` summed over the keys whose name "
            "holds the run's id. Not in the sum, because they are not one run's: the pinned "
            "spec (`legato:spec:<hash>`, column *spec*), the run's entry in the `legato:runs` "
            f"index (about {costs.index_entry_bytes:.0f} bytes each) and, when a producer "
            f"passes one, its idempotency key (`legato:idem:<key>`, {costs.idem_key_bytes} "
            "bytes). *Other keys*: the budget hash (`legato:budget:<id>`), attempts, vote "
            "tallies and the extras set, as a pipeline has them.")
        lines.append(
            "- *Celery's chord keys*: a parallel step runs as a Celery chord; Celery deletes the "
            "chord's bookkeeping when it completes but leaves a done marker "
            "(`celery-taskset-meta-<group id>.c`, named by Celery's group id, not the run's) "
            f"for max(2 × claim, 300 s): the longest TTL seen was {costs.celery_ttl_max} s. "
            "Counted per run from the keys each pipeline's batch left, not in *bytes per run*, "
            "and not subject to LEGATO_RUN_TTL.")
        shared = ", ".join(f"`{k}` ({n}) {b}" for k, (n, b) in sorted(costs.shared.items()))
        lines.append(f"- Keys that belong to no run (pattern (count) bytes, whatever the number "
                     f"of runs; `legato:runs` is the index, one entry per run): "
                     f"{shared or 'none'}.")
        lines.append(f"- `prune(older_than=0)` (what `legato prune --older-than 0s` runs) then "
                     f"deleted {costs.pruned} runs; keys of theirs left: "
                     f"{len(costs.left_after_prune) or 'none'}"
                     + (f" ({', '.join(costs.left_after_prune[:5])})"
                        if costs.left_after_prune else "")
                     + f". Cross-check by Redis's own count: used_memory fell by "
                     f"{costs.freed_by_prune} bytes, "
                     f"{costs.freed_by_prune / max(1, costs.pruned):.0f} per run (the index "
                     "entry included, and any change in connection buffers), "
                     "used_memory_dataset by "
                     f"{costs.dataset_freed_by_prune / max(1, costs.pruned):.0f} per run, "
                     f"against {costs.mean_sum:.0f} (mean of the sums above).")
    if s is not None:
        m = s.summary()
        lines.append(
            f"- Soak: {cfg.soak_runs} runs of `{SOAK_PIPELINE}` submitted at {cfg.rate:g}/s "
            f"(achieved {m['submitted_per_s']:.1f}/s, {s.elapsed_submit:.0f} s) by one "
            f"producer, LEGATO_RUN_TTL={cfg.ttl:g}, LEGATO_PRUNE_SECONDS={cfg.prune_seconds:g}, "
            f"LEGATO_SWEEP_SECONDS={cfg.sweep_seconds:g}; Redis sampled every "
            f"{cfg.sample_seconds:g} s (`INFO memory`, `DBSIZE`, `ZCARD legato:runs`). "
            f"Outcomes: {m['statuses']}; submit to finish median {m['latency_median_s'] * 1000:.0f}"
            f" ms, p99 {m['latency_p99_s'] * 1000:.0f} ms.")
        lines.append(
            f"- Flat part: from TTL + prune + sweep + 2 s = {cfg.flat_from:g} s after the first "
            f"submit to the last submit; least-squares slope of used_memory there: "
            f"{m['flat_slope_bytes_per_min'] / 1024:+.1f} KiB/min. Peak "
            f"{_mib(m['peak'])} MiB at t = {m['peak_t']:.0f} s.")
        new = m["new_key_kinds_after"]
        lines.append(f"- Kinds of keys present after the drain that were not before the soak: "
                     f"{', '.join(f'`{k}`' for k in new) if new else 'none'}.")
    return "\n".join(lines)


def markdown(cfg: Config, costs: Costs | None, s: Soak | None, redis_version: str,
             chart: str | None) -> str:
    parts = [BEGIN, "### Latest run", "", _setup(cfg, costs, s, redis_version), ""]
    if costs is not None:
        parts += ["Redis bytes per finished run:", "", costs_table(costs), ""]
    if s is not None:
        parts += [f"Redis memory under a steady stream of {cfg.soak_runs} runs:", "",
                  soak_table(s), ""]
    if chart:
        parts += [f"![Redis memory during the retention soak]({chart})", ""]
    parts.append(END)
    return "\n".join(parts)


def write_csv(s: Soak, path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        names = list(asdict(s.samples[0]))
        writer.writerow(names)
        for sample in s.samples:
            writer.writerow(asdict(sample).values())


def chart(s: Soak, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t = [x.t for x in s.samples]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 2]})
    ax.plot(t, [x.used_memory / 2**20 for x in s.samples], color="#3a6ea5",
            label="Redis used_memory")
    ax.plot(t, [x.dataset / 2**20 for x in s.samples], color="#3a6ea5", lw=0.8, ls="--",
            label="of which the keys (used_memory_dataset)")
    ax.axhline(s.baseline / 2**20, color="#999999", lw=0.8, ls=":", label="before the first run")
    for a in (ax, ax2):
        a.axvline(s.cfg["ttl"], color="darkorange", lw=0.8, ls="--")
        a.axvline(s.marks["100%"], color="black", lw=0.8, ls="--")
        a.axvspan(s.cfg["flat_from"], s.marks["100%"], color="#e8f0e8", zorder=0)
    ax.text(s.cfg["ttl"], ax.get_ylim()[1], " TTL", va="top", fontsize=8, color="darkorange")
    ax.text(s.marks["100%"], ax.get_ylim()[1], " last submit", va="top", fontsize=8)
    ax.set_ylabel("MiB")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{s.cfg['soak_runs']} runs of {SOAK_PIPELINE} at {s.cfg['rate']:g}/s, "
                 f"LEGATO_RUN_TTL={s.cfg['ttl']:g} s (shaded: the flat part)", fontsize=10)
    ax2.plot(t, [x.keys for x in s.samples], color="#555555", label="keys (DBSIZE)")
    ax2.plot(t, [x.index for x in s.samples], color="#2e8b57", label="legato:runs entries")
    ax2.plot(t, [x.active for x in s.samples], color="#b22222", lw=0.8,
             label="unfinished runs")
    ax2.set_xlabel("seconds since the first submit")
    ax2.set_ylabel("count")
    ax2.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# -- main --------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.retention", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, under a minute")
    p.add_argument("--per-pipeline", type=int, help="runs of each example pipeline (20)")
    p.add_argument("--soak-runs", type=int, help="runs in the soak (20000)")
    p.add_argument("--rate", type=float, help="soak runs submitted per second (25)")
    p.add_argument("--ttl", type=float, help="LEGATO_RUN_TTL during the soak, seconds (20)")
    p.add_argument("--prune-seconds", type=float, help="LEGATO_PRUNE_SECONDS in the soak (5)")
    p.add_argument("--sweep-seconds", type=float, help="LEGATO_SWEEP_SECONDS in the soak (5)")
    p.add_argument("--sample-seconds", type=float, help="seconds between samples (2)")
    p.add_argument("--concurrency", type=int, help="worker threads (16)")
    p.add_argument("--pipelines", help="comma-separated example pipelines (all)")
    p.add_argument("--no-costs", action="store_true", help="skip the bytes per run")
    p.add_argument("--no-soak", action="store_true", help="skip the soak")
    p.add_argument("--out", type=Path, help="markdown to update (default docs/benchmarks.md; "
                   "with --quick, none); retention.png and retention.csv go beside it")
    p.add_argument("--no-write", action="store_true", help="print only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    values = dict(QUICK) if args.quick else {}
    for name in ("per_pipeline", "soak_runs", "rate", "ttl", "prune_seconds", "sweep_seconds",
                 "sample_seconds", "concurrency"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    cfg = Config(**values)
    names = examples()
    if args.pipelines:
        wanted = args.pipelines.split(",")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            print(f"no example pipeline (with an input) named {', '.join(unknown)}",
                  file=sys.stderr)
            return 2
        names = wanted
    out = args.out if args.out is not None or args.quick else ROOT / "docs" / "benchmarks.md"
    if args.no_write:
        out = None
    from bench import report

    costs = s = None
    with Stack() as stack:
        if not args.no_costs:
            costs = measure_costs(cfg, stack, names)
        if not args.no_soak:
            s = soak(cfg, stack)
        version = report.redis_version(stack.redis.port)
    if costs is not None:
        print(costs_table(costs))
        print()
    if s is not None:
        print(soak_table(s))
        print()
    drew = False
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        png, csv_path = out.parent / "retention.png", out.parent / "retention.csv"
        if s is not None:
            write_csv(s, csv_path)
            drew = chart(s, png)
        report.write_markdown(out, markdown(cfg, costs, s, version, png.name if drew else None),
                              BEGIN, END)
        print(f"wrote {out}" + (f", {csv_path} and {png}" if s is not None else ""))
    summary: dict[str, Any] = {"config": asdict(cfg)}
    if costs is not None:
        summary["bytes_per_run"] = {p.name: {"median": p.median, "max": p.max,
                                             "failed": p.failed, "spec": p.spec_bytes,
                                             "celery_per_run": p.celery_per_run}
                                    for p in costs.pipelines}
        summary["celery_ttl_max"] = costs.celery_ttl_max
        summary["index_entry_bytes"] = costs.index_entry_bytes
        summary["idem_key_bytes"] = costs.idem_key_bytes
        summary["left_after_prune"] = costs.left_after_prune
        summary["freed_by_prune_per_run"] = costs.freed_by_prune / max(1, costs.pruned)
        summary["dataset_freed_by_prune_per_run"] = (costs.dataset_freed_by_prune
                                                     / max(1, costs.pruned))
    if s is not None:
        summary["soak"] = s.summary()
    summary["chart"] = drew
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
