"""Park and resume: a step that waits holds no task and no worker slot; a signal resumes it once.

Three atomic scripts, all on one (run, path):

- `arrive` — run by the waiting step's own task, inside its journal lease. If a signal is
  already stored for (run, path) — it came early, or this is the resumed delivery — it is
  returned and the step finishes with it. Otherwise the step *parks*: its lease becomes a parked
  entry (the task's own signature — same task id, chain, chord membership — moves from
  `lease:sig` to `park:sig`), its journal record reads `waiting`, the deadline (if any) goes in
  `park:deadlines`, the run reads `waiting` (what for, since when) and leaves `active` (a
  waiting run is not stalled). The task then ends with `Parked` (Celery's Ignore): no result,
  no continuation, the message acked, the slot free.
- `signal` — from anywhere (CLI, client, the `legato.signal` task, the sweeper for a timeout).
  Refuses a missing or finished run; a second signal for the same (run, path) changes nothing
  ("already signalled": first wins). Else it stores the signal; if the step is parked it also
  takes the parked entry off (the run reads `running` again once no step of it is parked) and
  returns the parked signature, marked in `park:resuming`: the caller sends it, then confirms.
- `claim_resumes` — the sweeper's: signalled steps whose re-send was not confirmed within a
  grace period (the sender died between the script and the send) are claimed and sent again.

A resumed delivery that arrives twice is harmless: the journal memo returns the first's result,
a live lease drops the second (journal.py). So a step resumes exactly once: one script stores
the signal and takes the parked entry, and only the holder of that entry sends it (or the
sweeper, if it never confirmed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from celery.exceptions import Ignore

from legato.envelope import TERMINAL, StepRecord
from legato.keys import Keys, lease_member, split_member
from legato.lua import lua_set


class Parked(Ignore):
    """A step parked: its task ends without a result and without continuing the chain (the
    step-task base lets it through; Celery acks the message)."""


# Shared: after a parked step at ARGV[1] is taken off, the run reads running again once no step
# of it is parked, or shows the oldest parked step still waiting. KEYS[1]: run, KEYS[2]: parked.
_UNPARK = """
local function unpark(path)
  redis.call('HDEL', KEYS[2], path)
  if redis.call('HGET', KEYS[1], 'status') ~= 'waiting' then return end
  local left = redis.call('HVALS', KEYS[2])
  if #left == 0 then
    redis.call('HSET', KEYS[1], 'status', 'running')
    redis.call('HDEL', KEYS[1], 'awaiting', 'awaiting_since')
    return
  end
  local oldest = nil
  for _, raw in ipairs(left) do
    local entry = cjson.decode(raw)
    if not oldest or entry['since'] < oldest['since'] then oldest = entry end
  end
  redis.call('HSET', KEYS[1], 'awaiting', oldest['for'], 'awaiting_since', oldest['since'])
end
"""

# KEYS: run, parked, signals, steps, park sig, deadlines, resuming, leases, lease owner,
#       lease sig, active
# ARGV: path, member, token, now, deadline ('' for none), what for, waiting record, run id
_ARRIVE = _UNPARK + """
local signal = redis.call('HGET', KEYS[3], ARGV[1])
if signal then
  if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then unpark(ARGV[1]) end
  redis.call('HDEL', KEYS[5], ARGV[2])
  redis.call('ZREM', KEYS[6], ARGV[2])
  redis.call('ZREM', KEYS[7], ARGV[2])
  return {'signal', signal}
end
if redis.call('HGET', KEYS[9], ARGV[2]) ~= ARGV[3] then return {'lost'} end
redis.call('HSET', KEYS[5], ARGV[2], redis.call('HGET', KEYS[10], ARGV[2]))
redis.call('ZREM', KEYS[8], ARGV[2])
redis.call('HDEL', KEYS[9], ARGV[2])
redis.call('HDEL', KEYS[10], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[7])
local entry = {['for'] = ARGV[6], since = tonumber(ARGV[4])}
if ARGV[5] ~= '' then
  entry['deadline'] = tonumber(ARGV[5])
  redis.call('ZADD', KEYS[6], ARGV[5], ARGV[2])
end
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(entry))
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'running' or status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'waiting', 'awaiting', ARGV[6], 'awaiting_since', ARGV[4])
end
redis.call('ZREM', KEYS[11], ARGV[8])
return {'parked'}
"""

# KEYS: run, parked, signals, steps, park sig, deadlines, resuming, active
# ARGV: path, member, signal JSON, now, run id, only if parked ('1': a timeout firing)
_SIGNAL = lua_set("TERMINAL", TERMINAL) + _UNPARK + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if TERMINAL[status] then return {'finished', status} end
local parked = redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1
if ARGV[6] == '1' and not parked then return {'not parked'} end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return {'already', redis.call('HGET', KEYS[3], ARGV[1])}
end
local prior = redis.call('HGET', KEYS[4], ARGV[1])
if prior then
  local ok, decoded = pcall(cjson.decode, prior)
  if ok and type(decoded) == 'table' and decoded['status'] == 'succeeded' then
    return {'already', prior}
  end
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
if not parked then return {'stored'} end
unpark(ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[2])
redis.call('ZADD', KEYS[7], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[8], ARGV[4], ARGV[5])
return {'resumed', redis.call('HGET', KEYS[5], ARGV[2])}
"""

# KEYS: resuming, park sig. ARGV: cutoff, now, limit. Signalled steps not confirmed sent since
# the cutoff: claimed (scored now, so another sweeper leaves them) with their signatures.
_CLAIM_RESUMES = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local claimed = {}
for _, member in ipairs(stale) do
  local sig = redis.call('HGET', KEYS[2], member)
  if sig then
    redis.call('ZADD', KEYS[1], ARGV[2], member)
    claimed[#claimed + 1] = member
    claimed[#claimed + 1] = sig
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return claimed
"""

# KEYS: deadlines. ARGV: now, retry at, limit. Parked steps past their deadline, claimed (moved
# to `retry at`, so a sweeper that dies before signalling them leaves them for the next).
_CLAIM_DEADLINES = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
"""

SignalState = Literal["stored", "resumed", "already", "missing", "finished", "not parked"]


@dataclass
class Arrival:
    """What a waiting step finds: the signal stored for it, or that it parked (or lost its
    lease to another delivery: `lost`, which ends like parking)."""

    state: Literal["signal", "parked", "lost"]
    signal: dict[str, Any] | None = None


@dataclass
class Signalled:
    """What a signal did. `resume`: the parked step's signature, to send (then `confirm`)."""

    state: SignalState
    resume: dict[str, Any] | None = None
    prior: str | None = None  # `already`: the signal (or record) that was there first
    run_status: str | None = None  # `finished`: the run's state


def signal_json(data: Any, *, at: float, by: str | None = None, timeout: bool = False) -> str:
    """A stored signal: its payload, when it came and from whom; a timeout has no payload."""
    body: dict[str, Any] = {"at": at}
    if timeout:
        body["timeout"] = True
    else:
        body["data"] = data
    if by:
        body["by"] = by
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


class Waits:
    """The park/resume primitive over one Redis (see the module's docstring)."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._arrive = client.register_script(_ARRIVE)
        self._signal = client.register_script(_SIGNAL)
        self._claim_resumes = client.register_script(_CLAIM_RESUMES)
        self._claim_deadlines = client.register_script(_CLAIM_DEADLINES)

    def arrive(self, run_id: str, record: StepRecord, *, token: str, now: float,
               deadline: float | None, waits_for: str) -> Arrival:
        """Consume the signal stored for the step, or park it. `record`: its journal record
        while it waits (status `waiting`); `token`: the lease this delivery holds."""
        k, member = self.keys, lease_member(run_id, record.path)
        reply = self._arrive(
            keys=[k.run(run_id), k.parked(run_id), k.signals(run_id), k.steps(run_id),
                  k.park_sig, k.park_deadlines, k.park_resuming, k.leases, k.lease_owner,
                  k.lease_sig, k.active],
            args=[record.path, member, token, repr(now),
                  "" if deadline is None else repr(deadline), waits_for,
                  record.model_dump_json(), run_id])
        if reply[0] == "signal":
            return Arrival("signal", json.loads(reply[1]))
        return Arrival(reply[0])

    def signal(self, run_id: str, path: str, signal: str, *, now: float,
               only_if_parked: bool = False) -> Signalled:
        """Store `signal` (from `signal_json`) for the step, once; if the step is parked, take
        its entry off and return its signature to send. `only_if_parked`: a timeout, which
        must not stand in for a signal of a step that is not waiting."""
        k, member = self.keys, lease_member(run_id, path)
        reply = self._signal(
            keys=[k.run(run_id), k.parked(run_id), k.signals(run_id), k.steps(run_id),
                  k.park_sig, k.park_deadlines, k.park_resuming, k.active],
            args=[path, member, signal, repr(now), run_id, "1" if only_if_parked else "0"])
        state: SignalState = reply[0]
        if state == "resumed":
            return Signalled(state, resume=json.loads(reply[1]))
        if state == "already":
            return Signalled(state, prior=reply[1])
        if state == "finished":
            return Signalled(state, run_status=reply[1])
        return Signalled(state)

    def confirm(self, run_id: str, path: str) -> None:
        """The resumed step's signature was sent: the sweeper need not send it."""
        self.redis.zrem(self.keys.park_resuming, lease_member(run_id, path))

    def claim_resumes(self, *, now: float, grace_seconds: float,
                      limit: int = 100) -> list[tuple[str, str, dict[str, Any]]]:
        """Signalled steps whose re-send was never confirmed: (run id, path, signature)."""
        flat = self._claim_resumes(keys=[self.keys.park_resuming, self.keys.park_sig],
                                   args=[repr(now - grace_seconds), repr(now), limit])
        return [(*split_member(flat[i]), json.loads(flat[i + 1]))
                for i in range(0, len(flat), 2)]

    def claim_deadlines(self, *, now: float, retry_in: float,
                        limit: int = 100) -> list[tuple[str, str]]:
        """Parked steps past their deadline: (run id, path), each to be signalled a timeout."""
        due = self._claim_deadlines(keys=[self.keys.park_deadlines],
                                    args=[repr(now), repr(now + retry_in), limit])
        return [split_member(m) for m in due]

    def parked(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The run's parked steps: path -> {for, since, deadline}."""
        raw = self.redis.hgetall(self.keys.parked(run_id))
        return {path: json.loads(v) for path, v in raw.items()}

    def stored(self, run_id: str, path: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.keys.signals(run_id), path)
        return json.loads(raw) if raw else None

    def forget(self, run_id: str) -> None:
        """Drop a finished run's parked continuations (its own keys expire with it)."""
        members = [lease_member(run_id, p) for p in self.redis.hkeys(self.keys.parked(run_id))]
        if members:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hdel(self.keys.park_sig, *members)
            pipe.zrem(self.keys.park_deadlines, *members)
            pipe.zrem(self.keys.park_resuming, *members)
            pipe.execute()
