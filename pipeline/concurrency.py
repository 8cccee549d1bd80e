"""Concurrency keys: at most `limit` steps with the same rendered key run at once, cluster-wide.

    concurrency: {key: "{{ input.customer_id }}", limit: 2}

A step's slot is its journal lease: the key's sorted set holds the `<run>|<path>` members of the
steps that took a slot, and a member whose lease is gone — the step ended, or its worker died and
the lease ran out — no longer counts (the acquiring script drops it). So nothing renews a slot
but the lease's own heartbeat, ending a step frees its slot with no extra round trip, and a dead
worker's slot comes free when its lease expires. A step that finds the key full goes back to the
broker for a second or so (tasks/base.py), holding no worker thread meanwhile.
"""

from __future__ import annotations

from typing import Any

from legato.keys import Keys

# KEYS: the key's slots, leases. ARGV: member, limit, now. Returns {1} (a slot: taken or held
# already) or {0, slots in use}.
_ACQUIRE = """
local now = tonumber(ARGV[3])
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if m ~= ARGV[1] then
    local lease = redis.call('ZSCORE', KEYS[2], m)
    if not lease or tonumber(lease) < now then redis.call('ZREM', KEYS[1], m) end
  end
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {1} end
local used = redis.call('ZCARD', KEYS[1])
if used < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  return {1}
end
return {0, used}
"""

MAX_KEY_CHARS = 200  # a rendered key longer than this is refused (it names a Redis key)


class ConcurrencyKeys:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.keys = keys
        self._acquire = redis.register_script(_ACQUIRE)

    def acquire(self, key: str, member: str, limit: int, *, now: float) -> int | None:
        """Take a slot of `key` for `member` (a step's lease member): None when taken (or held
        already), else how many slots are in use."""
        reply = self._acquire(keys=[self.keys.concurrency(key), self.keys.leases],
                              args=[member, limit, repr(now)])
        return None if int(reply[0]) else int(reply[1])
