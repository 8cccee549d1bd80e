"""A circuit breaker per provider (base_url + model), shared by every worker through Redis.

Closed: calls go through and each failed attempt counts. `failures` consecutive failed attempts
open it: calls skip this provider (to a fallback) for `cooldown` seconds. Then it is half-open:
one caller at a time gets a probe; a success closes it, a failure opens it for another cool-down.
Keys (keys.py): `<prefix>:breaker:<provider>` (a hash: failures, opened_at) and `...:probe`
(a lock).

The healthy path costs no round trip: a process that found a provider closed with no failure on
record trusts that for `TRUST_CLOSED` seconds, and a success is written only when there may be
something to reset. So a breaker opened elsewhere is noticed here within a second.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any, Literal

from legato.keys import Keys
from legato.models.config import ModelConfig

State = Literal["closed", "open", "half-open"]
TRUST_CLOSED = 1.0


def provider_id(cfg: ModelConfig) -> str:
    return hashlib.sha1(f"{cfg.base_url.rstrip('/')}|{cfg.model}".encode()).hexdigest()[:16]


class CircuitBreaker:
    def __init__(self, redis: Any, prefix: str = "legato", *,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.clock = clock
        self._closed_until: dict[str, float] = {}  # provider -> until when "closed" is trusted

    def key(self, cfg: ModelConfig) -> str:
        return self.keys.breaker(provider_id(cfg))

    def state(self, cfg: ModelConfig) -> State:
        if cfg.breaker is None:
            return "closed"
        key, now = self.key(cfg), self.clock()
        if self._closed_until.get(key, 0.0) > now:
            return "closed"
        opened, failures = self.redis.hmget(key, "opened_at", "failures")
        if opened is None:
            if failures is None:  # not a failure on record anywhere: trust it for a moment
                self._closed_until[key] = now + TRUST_CLOSED
            return "closed"
        self._closed_until.pop(key, None)
        return "open" if now - float(opened) < cfg.breaker.cooldown else "half-open"

    def allow(self, cfg: ModelConfig) -> bool:
        """May a call go to this provider now? In half-open, only the one probe may."""
        state = self.state(cfg)
        if state != "half-open":
            return state == "closed"
        assert cfg.breaker is not None
        lock_ms = max(1, int(cfg.breaker.cooldown * 1000))
        probe = self.keys.breaker_probe(provider_id(cfg))
        return bool(self.redis.set(probe, "1", nx=True, px=lock_ms))

    def is_open(self, cfg: ModelConfig) -> bool:
        return self.state(cfg) == "open"

    def failure(self, cfg: ModelConfig) -> None:
        if cfg.breaker is None:
            return
        key = self.key(cfg)
        self._closed_until.pop(key, None)
        pipe = self.redis.pipeline()
        pipe.hincrby(key, "failures", 1)
        pipe.delete(self.keys.breaker_probe(provider_id(cfg)))
        pipe.hexists(key, "opened_at")
        failures, probing, was_open = pipe.execute()
        if probing or was_open or failures >= cfg.breaker.failures:
            self.redis.hset(key, "opened_at", repr(self.clock()))
            self.redis.expire(key, int(cfg.breaker.cooldown * 10) + 60)

    def success(self, cfg: ModelConfig) -> None:
        if cfg.breaker is None:
            return
        key = self.key(cfg)
        if self._closed_until.get(key, 0.0) > self.clock():
            return  # found closed just now and no failure since: nothing to reset
        self.redis.delete(key, self.keys.breaker_probe(provider_id(cfg)))
