"""Submitting jobs and waiting for them, Legato and raw Celery, timed by the workers' clocks.

Waiting polls Redis with one pipelined read per interval (HGET on run records for Legato, GET on
the last task's result for raw Celery) from a connection of its own, so the round-trip counter
can leave it out. Completion times are the workers' own (`finished_at`, the last task's return).
"""

from __future__ import annotations

import gc
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from celery import chain, chord

from bench import rawapp
from legato.client import Legato
from legato.settings import Settings
from legato.spec import Pipeline

POLL_S = 0.05


@dataclass
class Batch:
    """A batch of jobs: when the first was submitted, when the last finished."""

    t0: float
    done_at: float
    jobs: int
    failed: int = 0

    @property
    def elapsed(self) -> float:
        return self.done_at - self.t0


def _models(base_url: str) -> dict[str, Any]:
    return {"fake": {"base_url": base_url, "model": "fake", "structured_output": "json_object"}}


def chain_pipeline(steps: int, base_url: str) -> Pipeline:
    """`steps` llm steps in a chain; each reads the one before, as a real chain does."""
    llms = [{"kind": "llm", "id": "s0", "model": "fake", "prompt": "{{ input.text }}"}]
    llms += [{"kind": "llm", "id": f"s{i}", "model": "fake",
              "prompt": f"Go on: {{{{ outputs.s{i - 1} }}}}"} for i in range(1, steps)]
    return Pipeline.model_validate({"name": f"bench_chain_{steps}", "steps": llms,
                                    "models": _models(base_url)})


def fanout_pipeline(n: int, base_url: str) -> Pipeline:
    """A vote of `n` identical model calls, concatenated."""
    vote = {"step": {"kind": "llm", "id": "call", "model": "fake", "prompt": "{{ input.text }}"},
            "n": n}
    step = {"kind": "parallel", "id": "fan", "vote": vote, "aggregate": {"method": "concat"}}
    return Pipeline.model_validate({"name": f"bench_fanout_{n}", "steps": [step],
                                    "models": _models(base_url)})


def _run_key(store: Any, run_id: str) -> str:
    """The run record's key, whichever way the store of the day spells it."""
    keys = getattr(store, "keys", None)
    if keys is not None and hasattr(keys, "run"):
        return str(keys.run(run_id))
    return str(store.run_key(run_id))


class LegatoJobs:
    def __init__(self, redis_url: str, settings: Settings | None = None) -> None:
        self.client = Legato(settings or Settings.from_env())
        self.poller = redis.Redis.from_url(redis_url, decode_responses=True)

    def poller_addr(self) -> str:
        return str(self.poller.client_info()["addr"])

    def submit(self, pipeline: Pipeline, jobs: int) -> list[str]:
        return [self.client.submit(pipeline, {"text": f"job {i} {uuid.uuid4().hex[:6]}"})
                for i in range(jobs)]

    def run(self, pipeline: Pipeline, jobs: int, timeout: float = 600) -> Batch:
        t0 = time.time()
        return self.wait(self.submit(pipeline, jobs), t0, timeout)

    def wait(self, ids: list[str], t0: float | None = None, timeout: float = 600) -> Batch:
        t0 = time.time() if t0 is None else t0
        keys = [_run_key(self.client.store, i) for i in ids]
        deadline = time.monotonic() + timeout
        while True:
            pipe = self.poller.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, "status", "finished_at")
            rows = pipe.execute()
            if all(r[0] in ("succeeded", "failed", "cancelled") for r in rows):
                break
            if time.monotonic() > deadline:
                done = sum(r[0] == "succeeded" for r in rows)
                raise TimeoutError(f"{done} of {len(ids)} Legato runs done after {timeout}s")
            time.sleep(POLL_S)
        return Batch(t0, max(float(r[1]) for r in rows), len(ids),
                     failed=sum(r[0] != "succeeded" for r in rows))

    def close(self) -> None:
        self.poller.close()
        self.client.store.redis.close()


class RawJobs:
    def __init__(self, redis_url: str, model_url: str) -> None:
        rawapp.app.conf.update(broker_url=redis_url, result_backend=redis_url)
        self.poller = redis.Redis.from_url(redis_url, decode_responses=True)
        self.call_url = model_url.rstrip("/") + "/chat/completions"

    def poller_addr(self) -> str:
        return str(self.poller.client_info()["addr"])

    def _wait(self, task_ids: list[str], t0: float, timeout: float) -> Batch:
        keys = [f"celery-task-meta-{i}" for i in task_ids]
        deadline = time.monotonic() + timeout
        while True:
            values = self.poller.mget(keys)
            if all(values):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sum(1 for v in values if v)} of {len(keys)} done")
            time.sleep(POLL_S)
        metas = [json.loads(v or "{}") for v in values]
        failed = sum(m["status"] != "SUCCESS" for m in metas)
        done = max(float(m["result"]) for m in metas if m["status"] == "SUCCESS")
        return Batch(t0, done, len(keys), failed)

    def noop_chains(self, steps: int, jobs: int, timeout: float = 600) -> Batch:
        t0 = time.time()
        ids = [chain(*[rawapp.noop.s() for _ in range(steps)]).apply_async().id
               for _ in range(jobs)]
        return self._wait(ids, t0, timeout)

    def call_chains(self, steps: int, jobs: int, timeout: float = 600) -> Batch:
        t0 = time.time()
        sig = [rawapp.call.s(url=self.call_url) for _ in range(steps)]
        ids = [chain(*[s.clone() for s in sig]).apply_async().id for _ in range(jobs)]
        return self._wait(ids, t0, timeout)

    def sleep_chord(self, n: int, seconds: float, timeout: float = 600) -> Batch:
        t0 = time.time()
        result = chord([rawapp.sleep.s(seconds) for _ in range(n)])(rawapp.join.s())
        return self._wait([result.id], t0, timeout)

    def calls(self, n: int) -> list[str]:
        """n independent model calls (for the memory reading); returns their task ids."""
        return [rawapp.call.s(url=self.call_url).apply_async().id for _ in range(n)]

    def wait_ids(self, ids: list[str], timeout: float = 600) -> Batch:
        return self._wait(ids, time.time(), timeout)

    def close(self) -> None:
        # Stock Celery keeps every sent result pending; let them go while Redis is still up, not
        # at interpreter exit.
        pending = getattr(rawapp.app.backend, "_pending_results", None)
        if pending is not None:
            for store in pending:
                store.clear()
        gc.collect()
        self.poller.close()
