"""Retention: a finished run's keys — record, journal, outputs, attempts, vote tallies, budget,
idempotency key — expire after LEGATO_RUN_TTL, a resumed run keeps them again, and `legato prune`
deletes finished runs (and the index entries of expired ones) at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from legato import Budget, Llm, Parallel, Pipeline, RunNotFound, Vote
from legato.local import processes

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "legato.test.retention"
TTL = 3


@pytest.fixture(scope="module")
def short_lived(stack_env, tmp_path_factory):
    """A worker whose finished runs live TTL seconds (it closes the runs whose last steps it
    runs: they end in llm steps on its queue)."""
    env = {**stack_env, "LEGATO_RUN_TTL": str(TTL)}
    with processes.worker("retention", [QUEUE], env=env,
                          log_dir=tmp_path_factory.mktemp("retention")) as service:
        yield service


def _voting(queue: str | None = None) -> Pipeline:
    voter = Llm(id="judge", model="small", prompt="Say yes", queue=queue)
    return Pipeline(name="retained", budget=Budget(max_calls=50), steps=[
        Parallel(id="poll", queue=queue, vote=Vote(n=3, quorum=2, step=voter),
                 aggregate={"method": "majority"}),
        Llm(id="after", model="small", prompt="Done: {{ outputs.poll }}", queue=queue),
    ])


def _keys_of(client, run_id: str) -> set[str]:
    return {k.decode() if isinstance(k, bytes) else k
            for k in client.scan_iter(match=f"*{run_id}*", count=1000)}


def test_a_finished_runs_keys_expire_after_the_ttl(legato, fake, short_lived, redis_server):
    client = redis_server.client()
    run = legato.wait(legato.submit(_voting(QUEUE), {}, idempotency_key="keep-me-briefly"),
                      timeout=30)
    assert run.status == "succeeded", run.error
    keys = _keys_of(client, run.id) | {"legato:idem:keep-me-briefly"}
    assert any(":vote:" in k for k in keys) and any(k.startswith("legato:budget:") for k in keys)
    ttls = {k: client.ttl(k) for k in keys}
    assert all(0 < t <= TTL for t in ttls.values()), ttls
    time.sleep(TTL + 1)
    assert not any(client.exists(k) for k in keys)
    with pytest.raises(RunNotFound):
        legato.status(run.id)
    assert legato.store.prune(older_than=0) >= 1  # the index entry the keys left behind
    assert client.zscore("legato:runs", run.id) is None


def test_resuming_a_finished_run_keeps_its_keys_again(legato, fake, short_lived, redis_server):
    client = redis_server.client()
    fake.script({"faults": [{"kind": "status", "code": 400, "body": "no"}]})
    failed = legato.wait(legato.submit(Pipeline(name="again", steps=[
        Llm(id="only", model="small", prompt="Hi", queue=QUEUE)]), {}), timeout=30)
    assert failed.status == "failed"
    assert 0 < client.ttl(f"legato:run:{{{failed.id}}}") <= TTL
    fake.reset()
    legato.resume(failed.id)
    run = legato.wait(failed.id, timeout=30)
    assert run.status == "succeeded", run.error
    assert 0 < client.ttl(f"legato:run:{{{run.id}}}") <= TTL  # finished again: ttl again


def test_prune_deletes_finished_runs_now_and_leaves_unfinished_ones(legato, fake, stack_env,
                                                                    redis_server):
    client = redis_server.client()
    done = legato.wait(legato.submit(_voting(), {}, idempotency_key="prune-me"), timeout=30)
    assert done.status == "succeeded", done.error
    assert client.ttl(f"legato:run:{{{done.id}}}") > TTL  # the default: a week
    unfinished = legato.store  # a run that is still queued: a bare record, never sent
    from legato.envelope import RunRecord

    waiting = RunRecord(id="unfinished-run-prune", pipeline="p", spec_hash="h", status="queued",
                        created_at=time.time() - 3600)
    unfinished.create_run(waiting)
    pruned = subprocess.run([sys.executable, "-m", "legato.cli", "prune", "--older-than", "0s"],
                            cwd=ROOT, env={**os.environ, **stack_env}, capture_output=True,
                            text=True, timeout=60)
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.startswith("pruned ")
    assert _keys_of(client, done.id) == set()
    assert not client.exists("legato:idem:prune-me")
    assert client.zscore("legato:runs", done.id) is None
    assert legato.status("unfinished-run-prune").status == "queued"
    bad = subprocess.run([sys.executable, "-m", "legato.cli", "prune", "--older-than", "soon"],
                         cwd=ROOT, env={**os.environ, **stack_env}, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
