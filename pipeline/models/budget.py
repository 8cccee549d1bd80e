"""Per-run budgets (tokens, cost, model calls, deadline), metered in Redis across all workers.

`check` runs before each model call: it fails with BudgetExceeded when the deadline has passed or
tokens/cost are already spent, and reserves one call against `max_calls`. `charge` adds a call's
real usage after it. Key: `<prefix>:budget:<run_id>` (a hash: calls, tokens, cost, started).
The deadline counts from the run's creation (from its first model call when that is not known).
Calls are reserved atomically; tokens and cost are checked as spent so far, so calls already in
flight when the budget runs out can overshoot it by their own use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from legato.envelope import Usage
from legato.errors import BudgetExceeded
from legato.keys import Keys
from legato.models.config import Budget, ModelConfig

TTL_SECONDS = 7 * 24 * 3600


def cost_of(cfg: ModelConfig, usage: Usage) -> float:
    """What `usage` cost on `cfg`'s price table (0 without one)."""
    if cfg.prices is None:
        return 0.0
    return (usage.prompt_tokens * cfg.prices.input_per_mtok
            + usage.completion_tokens * cfg.prices.output_per_mtok) / 1_000_000


class BudgetMeter:
    def __init__(self, redis: Any, prefix: str = "legato", *,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.clock = clock

    def key(self, run_id: str) -> str:
        return self.keys.budget(run_id)

    def spent(self, run_id: str) -> dict[str, float]:
        raw = self.redis.hgetall(self.key(run_id))
        return {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}

    def check(self, run_id: str, budget: Budget, *, started_at: float | None = None) -> None:
        key, now = self.key(run_id), self.clock()
        pipe = self.redis.pipeline()
        pipe.hsetnx(key, "started", repr(started_at if started_at is not None else now))
        pipe.expire(key, TTL_SECONDS)
        pipe.hgetall(key)
        _, _, raw = pipe.execute()
        spent = {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}
        if budget.deadline_seconds is not None:
            elapsed = now - spent.get("started", now)
            if elapsed >= budget.deadline_seconds:
                raise BudgetExceeded(f"budget exceeded: deadline of {budget.deadline_seconds:g}s "
                                     f"passed ({elapsed:.1f}s since the run began)")
        if budget.max_tokens is not None and spent.get("tokens", 0) >= budget.max_tokens:
            raise BudgetExceeded(f"budget exceeded: {int(spent['tokens'])} tokens used, "
                                 f"max_tokens {budget.max_tokens}")
        if budget.max_cost is not None and spent.get("cost", 0) >= budget.max_cost:
            raise BudgetExceeded(f"budget exceeded: cost {spent['cost']:.6f} spent, "
                                 f"max_cost {budget.max_cost:g}")
        if budget.max_calls is not None:
            calls = self.redis.hincrby(key, "calls", 1)
            if calls > budget.max_calls:
                self.redis.hincrby(key, "calls", -1)
                raise BudgetExceeded(f"budget exceeded: max_calls {budget.max_calls} made")

    def charge(self, run_id: str, budget: Budget, usage: Usage) -> None:
        key = self.key(run_id)
        pipe = self.redis.pipeline()
        if budget.max_calls is None:
            pipe.hincrby(key, "calls", usage.calls)
        pipe.hincrby(key, "tokens", usage.total_tokens)
        pipe.hincrbyfloat(key, "cost", usage.cost)
        pipe.expire(key, TTL_SECONDS)
        pipe.execute()
