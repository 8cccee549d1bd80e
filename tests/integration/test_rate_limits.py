"""Rate limits hold across the cluster: three worker processes share one model alias's buckets.

Celery's own `rate_limit` is per worker (celery#5732); Legato's buckets live in Redis. Three extra
worker processes (8 threads each) take a 24-way vote from their own queue as fast as they can; the
fake model counts the requests it sees in each wall-clock second.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from legato import Legato, Llm, Parallel, Pipeline
from legato.local import processes
from legato.spec import Aggregate, ModelConfig, RateLimit, Vote

QUEUE = "legato.test.ratelimited"


@pytest.fixture(scope="module")
def three_workers(stack_env: dict[str, str], workers: dict[str, processes.Service],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[processes.Service]]:
    logs = tmp_path_factory.mktemp("rl-workers")
    services = [processes.worker(f"rl{i}", [QUEUE], env=stack_env, concurrency=8, log_dir=logs)
                for i in range(3)]
    try:
        with ThreadPoolExecutor(3) as pool:  # start them side by side
            list(pool.map(lambda s: s.start(), services))
        yield services
    finally:
        for service in services:
            service.stop()


def voting(base_url: str, name: str, limit: RateLimit, n: int, *,
           prompt: str = "Vote on {{ input.text }}", params: dict | None = None) -> Pipeline:
    cfg = ModelConfig(base_url=base_url, model=name, rate_limit=limit)
    judge = Llm(id="judge", model=f"limited-{name}", prompt=prompt, params=params or {},
                queue=QUEUE)
    # fuse=False: a task per member, so the three processes share the vote (and the limit)
    return Pipeline(name="limited", models={f"limited-{name}": cfg}, fuse=False, steps=[
        Parallel(id="vote", vote=Vote(step=judge, n=n), aggregate=Aggregate(method="concat"),
                 queue=QUEUE)])


def test_requests_per_window_hold_across_three_worker_processes(
    legato: Legato, fake, stack_env, three_workers
):
    name = f"rpm-{uuid.uuid4().hex[:8]}"
    pipeline = voting(stack_env["LEGATO_MODEL_BASE_URL"], name, RateLimit(requests=5, per=1), 24)
    run = legato.wait(legato.submit(pipeline, {"text": "limits"}), timeout=60)

    assert run.status == "succeeded", run.error
    steps = legato.steps(run.id)
    members = [s for s in steps if s.path.startswith("vote/judge[")]
    assert len(members) == 24
    assert len({s.worker for s in members}) == 3  # every process took part
    stats = fake.stats()
    assert stats["by_model"] == {name: 24}
    per_second = stats["by_second"]
    assert max(per_second.values()) <= 5, per_second
    assert len(per_second) >= 5  # 24 calls at ~4.5 a second: the limit, not the pool, paced them
    waited = [c.get("rate_limited", 0) for s in members for c in s.detail["model_calls"]]
    assert sum(1 for w in waited if w > 0) >= 12


def test_tokens_per_window_hold_across_three_worker_processes(
    legato: Legato, fake, stack_env, three_workers
):
    name = f"tpm-{uuid.uuid4().hex[:8]}"
    # A long prompt, so a call's real tokens (~450: prompt/4 + a 200-character echo) are close
    # to its estimate (prompt/4 + max_tokens 60): 2000 tokens a second admit 4 calls a second.
    pipeline = voting(stack_env["LEGATO_MODEL_BASE_URL"], name, RateLimit(tokens=2000, per=1), 16,
                      prompt="Vote on {{ input.text }}" + " lorem ipsum" * 130,
                      params={"max_tokens": 60})
    run = legato.wait(legato.submit(pipeline, {"text": "tokens"}), timeout=60)

    assert run.status == "succeeded", run.error
    members = [s for s in legato.steps(run.id) if s.path.startswith("vote/judge[")]
    per_call = max(s.usage.total_tokens for s in members)
    assert 400 <= per_call <= 500
    stats = fake.stats()
    assert stats["by_model"] == {name: 16}
    assert max(stats["by_second"].values()) * per_call <= 2000, stats["by_second"]
    assert len(stats["by_second"]) >= 4  # paced by the token limit
