"""The shared policies' state on a real Redis, with the breaker's clock in the test's hand."""

from __future__ import annotations

import time
import uuid

import pytest
import redis as redis_lib

from legato.errors import BudgetExceeded
from legato.models.breaker import CircuitBreaker
from legato.models.budget import BudgetMeter
from legato.models.ratelimit import RateLimiter
from legato.spec import Breaker, Budget, ModelConfig, RateLimit


def test_breaker_opens_probes_once_half_open_and_closes(redis_server):
    r = redis_lib.Redis.from_url(redis_server.url)
    now = [1000.0]
    breaker = CircuitBreaker(r, f"t{uuid.uuid4().hex[:6]}", clock=lambda: now[0])
    cfg = ModelConfig(base_url="http://x.test/v1", model="m",
                      breaker=Breaker(failures=3, cooldown=10))

    for _ in range(2):
        breaker.failure(cfg)
    assert breaker.state(cfg) == "closed" and breaker.allow(cfg)
    breaker.success(cfg)  # consecutive failures only
    for _ in range(3):
        breaker.failure(cfg)
    assert breaker.state(cfg) == "open" and not breaker.allow(cfg)

    now[0] += 10
    assert breaker.state(cfg) == "half-open"
    assert breaker.allow(cfg) and not breaker.allow(cfg)  # one probe at a time
    breaker.failure(cfg)  # the probe failed: open for another cool-down
    assert breaker.state(cfg) == "open"

    now[0] += 10
    assert breaker.allow(cfg)
    breaker.success(cfg)
    assert breaker.state(cfg) == "closed" and breaker.allow(cfg) and breaker.allow(cfg)


def test_a_bucket_admits_at_most_its_limit_in_any_window(redis_server):
    r = redis_lib.Redis.from_url(redis_server.url)
    limiter = RateLimiter(r, f"t{uuid.uuid4().hex[:6]}", sleep=time.sleep)
    limit = RateLimit(requests=10, per=0.5)
    admitted: list[float] = []
    deadline = time.monotonic() + 1.6
    while time.monotonic() < deadline:
        limiter.acquire("alias", limit, 1)
        admitted.append(time.monotonic())
    # Any 0.5 s window (a small allowance for the time between admission and this clock read).
    for i, t in enumerate(admitted):
        within = [u for u in admitted[i:] if u - t < 0.5 - 0.01]
        assert len(within) <= 10, (i, len(within))
    assert 20 <= len(admitted) <= 31  # 1 + 18 a second: the limit paces it


def test_budget_reserves_calls_atomically_and_counts_spend(redis_server):
    r = redis_lib.Redis.from_url(redis_server.url)
    meter = BudgetMeter(r, f"t{uuid.uuid4().hex[:6]}")
    budget = Budget(max_calls=2, max_tokens=100)
    meter.check("run", budget)
    meter.check("run", budget)
    with pytest.raises(BudgetExceeded, match="^budget exceeded: max_calls 2 made$"):
        meter.check("run", budget)
    assert meter.spent("run")["calls"] == 2
