"""The fault suite's workload and bookkeeping: runs across every pattern, their invariants."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from legato import Legato
from legato.envelope import RunRecord

ROOT = Path(__file__).resolve().parents[2]
PATTERNS = ["summarize", "support_triage", "stakeholders", "sentiment_vote", "research_brief"]

# Deterministic replies: the router always picks billing, so its branch queue is exercised.
SCRIPT = {"rules": [{"match": {"system_contains": "classify support tickets"},
                     "reply": {"branch": "billing"}}],
          "latency_ms": 40, "jitter_ms": 40}


def job(pattern: str, i: int) -> dict:
    example = json.loads((ROOT / "pipelines" / f"{pattern}.input.json").read_text())
    key = next(iter(example))
    return {key: f"{example[key]} (job {i})"}


def jobs(n: int, patterns: list[str] = PATTERNS) -> list[tuple[str, dict]]:
    return [(patterns[i % len(patterns)], job(patterns[i % len(patterns)], i)) for i in range(n)]


def submit(legato: Legato, batch: list[tuple[str, dict]]) -> list[str]:
    specs = {pattern: legato.load(pattern) for pattern in {p for p, _ in batch}}  # parse once
    return [legato.submit(specs[pattern], payload) for pattern, payload in batch]


def wait_all(legato: Legato, run_ids: list[str], timeout: float) -> dict[str, RunRecord]:
    """Every run's final record; raises if any is not terminal by the deadline (lost)."""
    deadline = time.monotonic() + timeout
    done: dict[str, RunRecord] = {}
    while len(done) < len(run_ids) and time.monotonic() < deadline:
        for run_id in run_ids:
            if run_id not in done:
                try:
                    record = legato.status(run_id)
                except Exception:  # Redis is restarting: ask again
                    time.sleep(0.2)
                    continue
                if record.done:
                    done[run_id] = record
        time.sleep(0.25)
    return done


@dataclass
class Figures:
    scenario: str
    runs: int = 0
    faults: int = 0
    terminal: int = 0
    succeeded: int = 0
    lost: int = 0
    recovered: int = 0  # steps that needed another attempt, and got it
    duplicated: int = 0  # completed model calls beyond one per step attempt
    wrong_outputs: int = 0
    slowest_recovery: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.scenario}: runs {self.runs}, faults injected {self.faults}, terminal "
                f"{self.terminal}, succeeded {self.succeeded}, lost {self.lost}, steps recovered "
                f"{self.recovered}, duplicated {self.duplicated}, wrong outputs "
                f"{self.wrong_outputs}, slowest recovery {self.slowest_recovery:.1f}s")


def check(legato: Legato, scenario: str, batch: list[tuple[str, dict]], run_ids: list[str],
          finals: dict[str, RunRecord], calls: Counter[str], expected: dict[str, object],
          faults: int, fault_times: list[float]) -> Figures:
    """Count what happened to every run and step; `calls` are model requests per step tag."""
    f = Figures(scenario, runs=len(run_ids), faults=faults, terminal=len(finals),
                lost=len(run_ids) - len(finals))
    for (pattern, payload), run_id in zip(batch, run_ids, strict=True):
        record = finals.get(run_id)
        if record is None:
            continue
        f.succeeded += record.status == "succeeded"
        key = json.dumps([pattern, payload], sort_keys=True)
        if record.status != "succeeded" or record.output != expected[key]:
            f.wrong_outputs += 1
            trail = "; ".join(f"{s.path} {s.status} a{s.attempt} {str(s.output)[:30]!r}"
                              for s in legato.steps(run_id))
            f.notes.append(f"{run_id} {pattern}: {record.status} {record.error} [{trail}]")
        for step in legato.steps(run_id):
            made = calls.get(f"{run_id}/{step.path}", 0)
            if step.kind not in ("tool",) and step.usage.calls:
                f.duplicated += max(0, made - step.attempt)
            if step.attempt > 1:
                f.recovered += 1
                before = [t for t in fault_times if t <= (step.started_at or 0)]
                if before and step.ended_at:
                    f.slowest_recovery = max(f.slowest_recovery, step.ended_at - max(before))
    return f
