"""Per-run budgets (tokens, cost, model calls, deadline), metered in Redis across all workers.

`check` runs before each model call, atomically (one Lua script): it fails with BudgetExceeded
when the deadline has passed, when the calls are used up, or when what is spent *plus what the
calls in flight have reserved* already reaches `max_tokens` / `max_cost`; otherwise it reserves
one call and the call's estimate (prompt chars / 4 + its completion cap, and that estimate's
cost). `charge` (after the call) and `release` (after a failed call) give the reservation back
and add what was really used. So concurrent calls — a 40-way vote — cannot all pass a budget that
only one of them fits in: a call starts only while something is left unreserved, and the
overshoot is bounded by the usage of the calls admitted while it was (each no more than its
estimate, unless the model answers past its cap). Key: `<prefix>:budget:<run_id>` (a hash:
calls, tokens, cost, reserved_tokens, reserved_cost, started). The deadline counts from the
run's creation (from its first model call when that is not known).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from legato.envelope import Usage
from legato.errors import BudgetExceeded
from legato.keys import Keys
from legato.models.config import Budget, ModelConfig

TTL_SECONDS = 7 * 24 * 3600

# KEYS: the budget hash. ARGV: now, started (or ""), ttl, deadline, max_calls, max_tokens,
# max_cost ("" for none), estimated tokens, estimated cost. Returns "ok" or why not, with numbers.
_RESERVE = """
local key = KEYS[1]
redis.call('HSETNX', key, 'started', ARGV[2] ~= '' and ARGV[2] or ARGV[1])
redis.call('EXPIRE', key, ARGV[3])
local b = {}
local raw = redis.call('HGETALL', key)
for i = 1, #raw, 2 do b[raw[i]] = tonumber(raw[i + 1]) end
local function num(name) return b[name] or 0 end
if ARGV[4] ~= '' and tonumber(ARGV[1]) - num('started') >= tonumber(ARGV[4]) then
  return {'deadline', tostring(tonumber(ARGV[1]) - num('started'))}
end
if ARGV[5] ~= '' and num('calls') >= tonumber(ARGV[5]) then return {'calls'} end
if ARGV[6] ~= '' and num('tokens') + num('reserved_tokens') >= tonumber(ARGV[6]) then
  return {'tokens', tostring(num('tokens')), tostring(num('reserved_tokens'))}
end
if ARGV[7] ~= '' and num('cost') + num('reserved_cost') >= tonumber(ARGV[7]) then
  return {'cost', tostring(num('cost')), tostring(num('reserved_cost'))}
end
redis.call('HINCRBY', key, 'calls', 1)
redis.call('HINCRBY', key, 'reserved_tokens', ARGV[8])
redis.call('HINCRBYFLOAT', key, 'reserved_cost', ARGV[9])
return {'ok'}
"""


def cost_of(cfg: ModelConfig, usage: Usage) -> float:
    """What `usage` cost on `cfg`'s price table (0 without one)."""
    if cfg.prices is None:
        return 0.0
    return (usage.prompt_tokens * cfg.prices.input_per_mtok
            + usage.completion_tokens * cfg.prices.output_per_mtok) / 1_000_000


@dataclass(frozen=True)
class Reservation:
    """What a call holds of its run's budget while it is in flight."""

    run_id: str
    tokens: int = 0
    cost: float = 0.0


def _opt(value: float | None) -> str:
    return "" if value is None else repr(value)


def estimated_cost(cfg: ModelConfig, tokens: int) -> float:
    """A ceiling for what `tokens` cost on `cfg` (each priced as the dearer kind)."""
    if cfg.prices is None:
        return 0.0
    return tokens * max(cfg.prices.input_per_mtok, cfg.prices.output_per_mtok) / 1_000_000


class BudgetMeter:
    def __init__(self, redis: Any, prefix: str = "legato", *,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.clock = clock
        self._reserve = redis.register_script(_RESERVE)

    def key(self, run_id: str) -> str:
        return self.keys.budget(run_id)

    def spent(self, run_id: str) -> dict[str, float]:
        raw = self.redis.hgetall(self.key(run_id))
        return {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}

    def check(self, run_id: str, budget: Budget, *, started_at: float | None = None,
              tokens: int = 0, cost: float = 0.0) -> Reservation:
        """Admit one call estimated at `tokens` (costing `cost`), or raise BudgetExceeded; the
        reservation is given back by `charge` or `release`."""
        now = self.clock()
        reply = self._reserve(keys=[self.key(run_id)], args=[
            repr(now), _opt(started_at), TTL_SECONDS, _opt(budget.deadline_seconds),
            _opt(budget.max_calls), _opt(budget.max_tokens), _opt(budget.max_cost), tokens,
            repr(cost)])
        why, *numbers = [r.decode() if isinstance(r, bytes) else r for r in reply]
        if why == "ok":
            return Reservation(run_id, tokens, cost)
        if why == "deadline":
            raise BudgetExceeded(f"budget exceeded: deadline of {budget.deadline_seconds:g}s "
                                 f"passed ({float(numbers[0]):.1f}s since the run began)")
        if why == "calls":
            raise BudgetExceeded(f"budget exceeded: max_calls {budget.max_calls} made")
        spent, reserved = float(numbers[0]), float(numbers[1])
        in_flight = f" (+{reserved:.6g} reserved by calls in flight)" if reserved else ""
        if why == "tokens":
            raise BudgetExceeded(f"budget exceeded: {int(spent)} tokens used{in_flight}, "
                                 f"max_tokens {budget.max_tokens}")
        raise BudgetExceeded(f"budget exceeded: cost {spent:.6f} spent{in_flight}, "
                             f"max_cost {budget.max_cost:g}")

    def charge(self, reservation: Reservation, usage: Usage) -> None:
        """The call is done: give its reservation back and add what it really used."""
        key = self.key(reservation.run_id)
        pipe = self.redis.pipeline()
        pipe.hincrby(key, "reserved_tokens", -reservation.tokens)
        pipe.hincrbyfloat(key, "reserved_cost", -reservation.cost)
        pipe.hincrby(key, "tokens", usage.total_tokens)
        pipe.hincrbyfloat(key, "cost", usage.cost)
        pipe.expire(key, TTL_SECONDS)
        pipe.execute()

    def release(self, reservation: Reservation) -> None:
        """The call failed: give its tokens and cost back (it still counts as a call)."""
        key = self.key(reservation.run_id)
        pipe = self.redis.pipeline()
        pipe.hincrby(key, "reserved_tokens", -reservation.tokens)
        pipe.hincrbyfloat(key, "reserved_cost", -reservation.cost)
        pipe.execute()
