"""A prefork worker: each child process makes its own runtime (workers/runtime.py) and never uses
its parent's — tool threads, HTTP tools' client, model transport, Redis pool — including children
forked later, from a parent whose runtime is already running (its store and sweeper made)."""

from __future__ import annotations

import sys
import uuid

from legato import Llm, Pipeline, Tool
from legato.local import processes


def test_prefork_children_each_make_their_own_runtime(stack_env, legato, fake, tmp_path):
    queue = f"legato.test.prefork.{uuid.uuid4().hex[:8]}"
    # Each child is replaced after two tasks: the new ones are forked from the running parent.
    argv = [sys.executable, "-m", "celery", "-A", "legato.workers.app", "worker", "-P", "prefork",
            "-c", "2", "--max-tasks-per-child", "2", "-Q", queue, "-n", "prefork@%h",
            "--loglevel", "INFO"]
    port = fake.root.rsplit(":", 1)[1]
    pipeline = Pipeline(name="prefork", steps=[
        Tool(id="health", tool="local_health", queue=queue, args={"port": port}),
        Tool(id="pid", tool="process_id", queue=queue),
        Llm(id="hello", model="small", queue=queue, prompt="Say hi to {{ input.n }}"),
    ])
    service = processes.Service("prefork", argv, env=stack_env, ready=r"\bready\.",
                                log_dir=tmp_path)
    with service:
        run_ids = [legato.submit(pipeline, {"n": i}) for i in range(6)]
        runs = [legato.wait(run_id, timeout=60) for run_id in run_ids]
        assert [r.status for r in runs] == ["succeeded"] * 6, [r.error for r in runs]
        assert service.proc is not None
        parent = service.proc.pid
    pids = set()
    for run_id in run_ids:
        steps = {s.path: s for s in legato.steps(run_id)}
        assert steps["health"].output["status"] == 200
        pids.add(steps["pid"].output)
    assert parent not in pids and len(pids) >= 3  # children, replaced as they went
