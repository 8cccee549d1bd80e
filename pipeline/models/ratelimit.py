"""Cluster-wide rate limits per model alias: token buckets in Redis, charged by one Lua script.

Each limit (requests, tokens) is a bucket holding at most `burst` units (a tenth of the limit for
requests, a quarter for tokens), refilled at `(limit - burst) / per` units a second, so that in
any window of `per` seconds no more than `limit` units are admitted: the burst plus what the
window refills. The price is a steady rate a little under the limit. Both buckets of an alias are
checked and charged together, atomically; a call waits until both admit it. Tokens are charged an
estimate before the call and reconciled with the real usage after it; a call larger than the
burst is admitted on a full bucket and leaves it in debt, which later calls wait out. The clock is
Redis's, so workers need not agree.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from legato.envelope import Messages, as_messages
from legato.errors import TransientError
from legato.keys import Keys
from legato.models.config import RateLimit

# KEYS: request bucket, token bucket. ARGV: per bucket (limit, burst, cost) x 2, window seconds.
# A limit of 0 means no such bucket. Returns {admitted, seconds to wait as a string}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local per = tonumber(ARGV[7])
local levels, waits = {}, {}
for i = 1, 2 do
  local limit, burst, cost = tonumber(ARGV[i*3-2]), tonumber(ARGV[i*3-1]), tonumber(ARGV[i*3])
  if limit > 0 then
    local rate = (limit - burst) / per
    if rate <= 0 then rate = limit / per end
    local b = redis.call('HMGET', KEYS[i], 'level', 'ts')
    local level = tonumber(b[1]) or burst
    local ts = tonumber(b[2]) or now
    level = math.min(burst, level + math.max(0, now - ts) * rate)
    local need = math.min(cost, burst)
    levels[i] = level
    if level < need then waits[#waits + 1] = (need - level) / rate end
  end
end
local wait = 0
for _, w in ipairs(waits) do wait = math.max(wait, w) end
for i = 1, 2 do
  if levels[i] ~= nil then
    local level = levels[i]
    if wait == 0 then level = level - tonumber(ARGV[i*3]) end
    redis.call('HSET', KEYS[i], 'level', tostring(level), 'ts', tostring(now))
    redis.call('EXPIRE', KEYS[i], math.ceil(per * 4) + 60)
  end
end
if wait == 0 then return {1, '0'} end
return {0, tostring(wait)}
"""

# KEYS: token bucket. ARGV: refund (estimate - actual; negative charges more), burst.
_RECONCILE = """
local level = tonumber(redis.call('HGET', KEYS[1], 'level'))
if level == nil then return 0 end
level = math.min(tonumber(ARGV[2]), level + tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'level', tostring(level))
return 1
"""


def burst_of(limit: int, *, tokens: bool = False) -> int:
    """A tenth of the limit for requests; a quarter for tokens, so one call's estimate fits."""
    return max(1, limit // (4 if tokens else 10))


def estimate_tokens(messages: Messages, params: dict[str, Any]) -> int:
    """About four characters a token for the prompt, plus the completion's cap (or 256)."""
    wire = [m.wire() for m in as_messages(messages)]
    prompt = len(json.dumps(wire, ensure_ascii=False)) // 4
    return prompt + int(params.get("max_tokens") or params.get("max_completion_tokens") or 256)


class RateLimiter:
    def __init__(self, redis: Any, prefix: str = "legato", *,
                 sleep: Callable[[float], None] = time.sleep, max_wait: float = 120.0) -> None:
        self.redis = redis
        self.prefix = prefix
        self._keys = Keys(prefix)
        self.sleep = sleep
        self.max_wait = max_wait
        self._acquire = redis.register_script(_ACQUIRE)
        self._reconcile = redis.register_script(_RECONCILE)

    def keys(self, alias: str) -> list[str]:
        return self._keys.ratelimit(alias)

    def acquire(self, alias: str, limit: RateLimit, tokens: int) -> float:
        """Wait until both buckets admit one call of about `tokens`; returns seconds waited."""
        args: list[Any] = []
        for cap, cost, is_tokens in ((limit.requests, 1, False), (limit.tokens, tokens, True)):
            args += [cap or 0, burst_of(cap, tokens=is_tokens) if cap else 0, cost]
        args.append(limit.per)
        waited = 0.0
        while True:
            admitted, wait = self._acquire(keys=self.keys(alias), args=args)
            if int(admitted):
                return waited
            seconds = float(wait)
            if waited + seconds > self.max_wait:
                raise TransientError(f"rate limit of {alias!r}: no room within {self.max_wait:g}s")
            self.sleep(seconds)
            waited += seconds

    def reconcile(self, alias: str, limit: RateLimit, estimate: int, actual: int) -> None:
        if limit.tokens and actual and actual != estimate:
            self._reconcile(keys=self.keys(alias)[1:],
                            args=[estimate - actual, burst_of(limit.tokens, tokens=True)])
