"""Several worker processes on different queues: routed branches run on their own queue's workers
(read from the step records), and a second worker on a saturated queue raises its throughput.

Queues are unique to each test, so the session's workers never take these messages; the rule
classifier and `legato.finalize` run on the session's `main` worker (legato.control)."""

from __future__ import annotations

import socket
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

from legato import Llm, Pipeline, Route
from legato.local import processes
from legato.spec import Classifier

LATENCY_MS = 400


def _queue(name: str) -> str:
    return f"legato.test.{name}.{uuid.uuid4().hex[:8]}"


def test_routed_branches_run_on_their_own_queues_workers(stack_env, legato, fake, tmp_path):
    billing_q, tech_q, llm_q = _queue("billing"), _queue("technical"), _queue("llm")
    pipeline = Pipeline(name="triage_many", steps=[
        Route(id="triage",
              classifier=Classifier(rule="'billing' if 'invoice' in input.ticket "
                                         "else 'technical'"),
              branches={
                  "billing": Llm(id="billing", model="small", queue=billing_q,
                                 prompt="Billing: {{ input.ticket }}"),
                  "technical": Llm(id="technical", model="small", queue=tech_q,
                                   prompt="Tech: {{ input.ticket }}"),
              }),
        Llm(id="followup", model="small", queue=llm_q, prompt="Follow up: {{ outputs.triage }}"),
    ])
    started = [processes.worker(name, [queue], env=stack_env, concurrency=4, log_dir=tmp_path)
               for name, queue in (("w-billing", billing_q), ("w-tech", tech_q),
                                   ("w-llm", llm_q))]
    with ThreadPoolExecutor() as pool, ExitStack() as stack:
        # Start (and later stop) the three at once: each takes a couple of seconds.
        stack.callback(lambda: list(pool.map(lambda w: w.stop(), started)))
        list(pool.map(lambda w: w.start(), started))
        tickets = [("my invoice is wrong", "billing"), ("the app crashes", "technical"),
                   ("invoice twice", "billing"), ("cannot log in", "technical")]
        runs = [(legato.submit(pipeline, {"ticket": t}), branch) for t, branch in tickets]
        for run_id, branch in runs:
            record = legato.wait(run_id, timeout=30)
            assert record.status == "succeeded", record.error
            steps = {s.path: s for s in legato.steps(run_id)}
            assert steps["triage"].output == {"branch": branch}
            assert steps["triage"].worker.startswith("main@")  # the rule runs on control
            chosen = steps[f"triage/{branch}"]
            expected_queue, expected_worker = (
                (billing_q, "w-billing@") if branch == "billing" else (tech_q, "w-tech@"))
            assert chosen.queue == expected_queue
            assert chosen.worker.startswith(expected_worker)
            other = "technical" if branch == "billing" else "billing"
            assert f"triage/{other}" not in steps
            assert steps["followup"].queue == llm_q
            assert steps["followup"].worker.startswith("w-llm@")


def _throughput(legato, pipeline: Pipeline, n: int) -> tuple[float, Counter[str]]:
    """Steps per second on the queue (n runs, from the step records' own timings), and which
    workers ran them."""
    run_ids = [legato.submit(pipeline, {"i": i}) for i in range(n)]
    records = []
    for run_id in run_ids:
        assert legato.wait(run_id, timeout=60).status == "succeeded"
        records += legato.steps(run_id)
    first = min(r.started_at for r in records)
    last = max(r.ended_at for r in records)
    return n / (last - first), Counter(r.worker.split("@")[0] for r in records)


def test_a_second_worker_raises_a_saturated_queues_throughput(stack_env, legato, fake, tmp_path):
    fake.script({"latency_ms": LATENCY_MS})
    queue, idle = _queue("saturated"), _queue("idle")
    pipeline = Pipeline(name="load", steps=[
        Llm(id="call", model="small", queue=queue, prompt="Item {{ input.i }}")])
    n = 12  # 2 threads, 0.4 s a call: ~2.4 s on one worker, ~1.2 s on two
    solo = processes.worker("solo", [queue], env=stack_env, concurrency=2, log_dir=tmp_path)
    helper = processes.worker("helper", [idle], env=stack_env, concurrency=2, log_dir=tmp_path)
    with ThreadPoolExecutor() as pool, ExitStack() as stack:
        stack.callback(lambda: list(pool.map(lambda w: w.stop(), (solo, helper))))
        list(pool.map(lambda w: w.start(), (solo, helper)))
        one, ran = _throughput(legato, pipeline, n)
        assert ran == {"solo": n}
        # Add the helper to the saturated queue, the way an operator would on a live worker
        # (`celery control add_consumer`); it answers once it consumes from it.
        replies = legato.app.control.add_consumer(
            queue, reply=True, timeout=10, destination=[f"helper@{socket.gethostname()}"])
        assert replies and "add consumer" in str(replies), replies
        # Redis transport: the helper's blocking pop on its old queue times out within 1 s,
        # then it polls the new queue too.
        time.sleep(1.2)
        two, ran = _throughput(legato, pipeline, n)
    # Ideal: 2x. A single worker cannot beat 2 / 0.4 s = 5 calls/s at all.
    assert one < 2 / (LATENCY_MS / 1000) * 1.1, one
    assert ran["solo"] >= n / 4 and ran["helper"] >= n / 4, ran  # both took a share
    assert two >= 1.5 * one, (one, two, ran)
    print(f"throughput: one worker {one:.1f}/s, two {two:.1f}/s, shares {dict(ran)}")
