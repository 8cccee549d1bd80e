"""Votes with a quorum: once `quorum` voters agree, the voters not yet begun skip their call.

Why skip rather than revoke: a revoked chord member reaches the chord as a failure, and Celery's
chord then never calls its body (the error-propagation path DESIGN.md steers around). A voter that
finds the quorum reached journals itself `skipped` and returns at once, so the fan-in still sees
every member and no model call is spent.
"""

from __future__ import annotations

import json
from typing import Any

from legato.keys import Keys

# KEYS: votes hash (voter path -> vote), reached flag, the run's extras set. ARGV: voter path,
# vote, quorum. Keyed by voter, so a redelivered voter is not counted twice.
_TALLY = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[3], KEYS[1], KEYS[2])
local agree = 0
for _, vote in ipairs(redis.call('HVALS', KEYS[1])) do
  if vote == ARGV[2] then agree = agree + 1 end
end
if agree >= tonumber(ARGV[3]) then redis.call('SET', KEYS[2], ARGV[2]) end
return agree
"""


class Ballot:
    def __init__(self, client: Any, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._tally = client.register_script(_TALLY)

    def _keys(self, run_id: str, node: str) -> list[str]:
        return [self.keys.votes(run_id, node), self.keys.vote_reached(run_id, node)]

    def reached(self, run_id: str, node: str) -> bool:
        return bool(self.redis.exists(self._keys(run_id, node)[1]))

    def cast(self, run_id: str, node: str, voter: str, vote: Any, quorum: int) -> int:
        """Count `voter`'s vote; returns how many voters agree with it so far."""
        canonical = json.dumps(vote, sort_keys=True, separators=(",", ":"))
        keys = [*self._keys(run_id, node), self.keys.run_extras(run_id)]
        return int(self._tally(keys=keys, args=[voter, canonical, quorum]))
