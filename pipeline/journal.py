"""The step journal: memoized results, leases, heartbeats, and claiming steps whose worker died.

Beginning a step is one round trip (a Lua script) that either
- returns the stored result, if the step already succeeded (a redelivered message costs nothing);
- says `busy`, if another delivery of the step holds a live lease (it must not run twice);
- says `stopped`, if the run is already terminal (cancelled, failed, succeeded);
- or writes the `running` record, takes the lease, keeps the task's signature (to dispatch it
  again if this worker dies), and returns the job input and the outputs the step reads.
Ending a step is one round trip too: the record, the outputs, usage, and the lease let go.

Both are safe to send again when a connection drops mid-call (the client retries): beginning
again with the same token re-takes the lease; ending again finds its record written and
stops (usage is counted once).

The scripts read a stored record by decoding it (`cjson.decode`), never by matching its bytes:
a record written with other spacing or key order (another serialiser, an older version) reads
the same. The run states they test come from `envelope.UNFINISHED`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from legato.envelope import UNFINISHED, StepRecord
from legato.keys import Keys, lease_member
from legato.lua import Part, Trips, lua_set

# KEYS: run, steps, outputs, leases, owner, sig, active, attempts, watched
# ARGV: path, running record (a JSON object without `attempt`), now, lease until, member, token,
#       signature, run id, ids to read...
# A prior record that does not decode counts as none: the step runs (and overwrites it).
_BEGIN = lua_set("UNFINISHED", UNFINISHED) + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
local prior = redis.call('HGET', KEYS[2], ARGV[1])
local prior_status = nil
if prior then
  local ok, decoded = pcall(cjson.decode, prior)
  if ok and type(decoded) == 'table' then prior_status = decoded['status'] end
end
if prior_status == 'succeeded' then
  return {'done', prior}
end
if not UNFINISHED[status] then return {'stopped', status} end
if prior_status == 'running' then
  local expiry = redis.call('ZSCORE', KEYS[4], ARGV[5])
  local owner = redis.call('HGET', KEYS[5], ARGV[5])
  local mine = owner == 'redispatch' or owner == ARGV[6]  -- a claimed lease, or this very call
  if expiry and tonumber(expiry) > tonumber(ARGV[3]) and not mine then
    return {'busy'}
  end
end
local attempt = redis.call('HINCRBY', KEYS[8], ARGV[1], 1)
local record = '{"attempt":' .. attempt .. ',' .. string.sub(ARGV[2], 2)
redis.call('HSET', KEYS[2], ARGV[1], record)
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
redis.call('HSET', KEYS[5], ARGV[5], ARGV[6])
redis.call('HSET', KEYS[6], ARGV[5], ARGV[7])
redis.call('ZADD', KEYS[7], 'XX', ARGV[3], ARGV[8])
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[3])
end
local reply = {'go', redis.call('HGET', KEYS[1], 'input'), tostring(attempt),
               redis.call('EXISTS', KEYS[9])}
for i = 9, #ARGV do
  reply[#reply + 1] = redis.call('HGET', KEYS[3], ARGV[i]) or ''
end
return reply
"""

# KEYS: steps, outputs, run, leases, owner, sig, active, unbilled
# ARGV: path, record, member, token, now, run id, prompt, completion, calls, cost, output, ids...
# Usage added to a run its tenant was already billed for (admission's settle; it ended while this
# step's call was in flight, or was resumed) marks the run for billing again.
_END = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return 0 end  -- sent twice
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for i = 12, #ARGV do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[11])
end
if tonumber(ARGV[9]) > 0 then
  redis.call('HINCRBY', KEYS[3], 'prompt_tokens', ARGV[7])
  redis.call('HINCRBY', KEYS[3], 'completion_tokens', ARGV[8])
  redis.call('HINCRBY', KEYS[3], 'calls', ARGV[9])
  if tonumber(ARGV[10]) > 0 then
    redis.call('HINCRBYFLOAT', KEYS[3], 'cost', ARGV[10])
  end
  if redis.call('HEXISTS', KEYS[3], 'billed_tokens') == 1 then
    redis.call('ZADD', KEYS[8], ARGV[5], ARGV[6])
  end
end
if redis.call('HGET', KEYS[5], ARGV[3]) == ARGV[4] then
  redis.call('ZREM', KEYS[4], ARGV[3])
  redis.call('HDEL', KEYS[5], ARGV[3])
  redis.call('HDEL', KEYS[6], ARGV[3])
end
redis.call('ZADD', KEYS[7], 'XX', ARGV[5], ARGV[6])
return 1
"""

# KEYS: leases, owner, active. ARGV: lease until, now, then (member, token, run id) triples.
_RENEW = """
local renewed = 0
for i = 3, #ARGV, 3 do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
    redis.call('ZADD', KEYS[3], 'XX', ARGV[2], ARGV[i + 2])
    renewed = renewed + 1
  end
end
return renewed
"""

# KEYS: leases, owner, sig. ARGV: now, grace until, limit.
# Claims expired leases for dispatching again: returns member, signature pairs.
_CLAIM = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local claimed = {}
for _, member in ipairs(expired) do
  local sig = redis.call('HGET', KEYS[3], member)
  if sig and string.sub(sig, 1, 1) == '@' then  -- a batch's or a segment's signature
    local ref = sig
    sig = redis.call('HGET', KEYS[3], ref)
    if sig and string.sub(ref, 1, 2) == '@@' then
      -- a segment's: one lease refers to it at a time, and its delivery is gone; the lease
      -- keeps the signature itself (a claim again finds it) and the reference goes
      redis.call('HSET', KEYS[3], member, sig)
      redis.call('HDEL', KEYS[3], ref)
    end
  end
  if sig then
    redis.call('ZADD', KEYS[1], ARGV[2], member)
    redis.call('HSET', KEYS[2], member, 'redispatch')
    claimed[#claimed + 1] = member
    claimed[#claimed + 1] = sig
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return claimed
"""


# A signature kept once for many leases (a segment's or a batch's: `@<task id>`), and let go.
# KEYS: sig. ARGV: ref, signature (to keep) or ref (to forget).
_KEEP_SIG = "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\nreturn 1"
_FORGET_SIG = "redis.call('HDEL', KEYS[1], ARGV[1])\nreturn 1"

# A batch delivery that will not run (a member is busy) lets go of its reference: the leases it
# took (still its own) keep the signature itself, so their running out sends the batch again,
# and the reference goes unless a member is busy under it (a delivery of this very task runs,
# and forgets it when done).
# KEYS: owner, sig. ARGV: ref, token, signature, how many began, members began..., busy...
_UNSHARE_SIG = """
local began = tonumber(ARGV[4])
for i = 5, 4 + began do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[2] then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[3])
  end
end
for i = 5 + began, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1] then return 0 end
end
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

BeginState = Literal["go", "done", "busy", "stopped", "missing"]


@dataclass
class Begin:
    """What a step sees when it starts."""

    state: BeginState
    input: Any = None
    outputs: dict[str, Any] = field(default_factory=dict)
    prior: StepRecord | None = None
    attempt: int = 1
    run_status: str | None = None
    watched: bool = False  # someone follows the run's events (legato.events.watching)


def _parse_begin(reply: list[Any], reads: tuple[str, ...]) -> Begin:
    state: BeginState = reply[0]
    if state == "done":
        return Begin("done", prior=StepRecord.model_validate_json(reply[1]))
    if state == "stopped":
        return Begin("stopped", run_status=reply[1])
    if state != "go":
        return Begin(state)
    outputs = {k: json.loads(v) for k, v in zip(reads, reply[4:], strict=True) if v}
    return Begin("go", input=json.loads(reply[1]), outputs=outputs, attempt=int(reply[2]),
                 watched=reply[3] == 1)


def _signature_json(signature: dict[str, Any]) -> str:
    return json.dumps(signature, separators=(",", ":"), default=str)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Journal:
    def __init__(self, client: Any, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._begin = client.register_script(_BEGIN)
        self._end = client.register_script(_END)
        self._renew = client.register_script(_RENEW)
        self._claim = client.register_script(_CLAIM)
        self._unshare = client.register_script(_UNSHARE_SIG)
        # Parts that ride one round trip together (a segment's hand-off: one step's end, the
        # next one's begin; the run store adds its finish).
        self.trips = Trips(client, {"end": _END, "begin": _BEGIN, "keep_sig": _KEEP_SIG,
                                    "forget_sig": _FORGET_SIG})

    def begin(self, run_id: str, record: StepRecord, reads: tuple[str, ...], *, token: str,
              signature: dict[str, Any] | str, now: float, lease_seconds: float,
              first: list[Part] | None = None) -> Begin:
        """`first`: parts to run before, in the same round trip (a segment's hand-off: the
        previous step's end, `end_call`; its signature kept, `keep_signature`)."""
        call = self._begin_call(run_id, record, reads, token=token, signature=signature,
                                now=now, lease_seconds=lease_seconds)
        if not first:
            return _parse_begin(self._begin(**call), reads)
        reply = self.trips([*first, ("begin", call["keys"], call["args"])])
        return _parse_begin(reply[-1], reads)

    def keep_signature(self, ref: str, signature: dict[str, Any]) -> Part:
        """The part that keeps a task's signature once under `ref` (`@<task id>` for a batch;
        `@@<task id>:<delivery>` for a segment, whose one lease at a time refers to it: a claim
        moves it to the lease), for the leases of its steps to refer to (the sweeper's claim
        follows the reference)."""
        return ("keep_sig", [self.keys.lease_sig], [ref, _signature_json(signature)])

    def forget_signature(self, ref: str) -> Part:
        return ("forget_sig", [self.keys.lease_sig], [ref])

    def begin_many(self, run_id: str, steps: list[tuple[StepRecord, tuple[str, ...]]], *,
                   token: str, signature: dict[str, Any], task_id: str, now: float,
                   lease_seconds: float) -> list[Begin]:
        """`begin` for many steps of one run (a batch task's members), in one round trip. The
        task's signature is kept once, under `@<task id>`, and each member refers to it (a
        delivery sent again after its worker died keeps and forgets the same name)."""
        ref = f"@{task_id}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.lease_sig, ref, _signature_json(signature))
        for record, reads in steps:
            self._begin(**self._begin_call(run_id, record, reads, token=token,
                                           signature=ref, now=now,
                                           lease_seconds=lease_seconds), client=pipe)
        replies = pipe.execute()[1:]
        return [_parse_begin(reply, reads) for reply, (_, reads) in zip(replies, steps,
                                                                         strict=True)]

    def forget_batch(self, task_id: str) -> None:
        """Drop a batch's shared signature once its members are ended."""
        self.redis.hdel(self.keys.lease_sig, f"@{task_id}")

    def unshare_batch(self, task_id: str, *, token: str, signature: dict[str, Any],
                      began: list[str], busy: list[str]) -> None:
        """A batch delivery that will not run (`busy`: lease members another delivery holds):
        the leases it took (`began`) keep its signature themselves, and its `@<task id>` goes,
        unless a busy member refers to it (a delivery of this very task runs and forgets it)."""
        self._unshare(keys=[self.keys.lease_owner, self.keys.lease_sig],
                      args=[f"@{task_id}", token, _signature_json(signature), len(began),
                            *began, *busy])

    def _begin_call(self, run_id: str, record: StepRecord, reads: tuple[str, ...], *,
                    token: str, signature: dict[str, Any] | str, now: float,
                    lease_seconds: float) -> dict[str, list[Any]]:
        k = self.keys
        running = record.model_dump_json(exclude={"attempt"})  # the script puts it first
        return {
            "keys": [k.run(run_id), k.steps(run_id), k.outputs(run_id), k.leases, k.lease_owner,
                     k.lease_sig, k.active, k.attempts(run_id), k.watched(run_id)],
            "args": [record.path, running, repr(now), repr(now + lease_seconds),
                     lease_member(run_id, record.path), token,
                     signature if isinstance(signature, str) else _signature_json(signature),
                     run_id, *reads],
        }

    def end(self, run_id: str, record: StepRecord, publishes: tuple[str, ...], *, token: str,
            now: float, before: Callable[[Any], None] | None = None) -> None:
        """`before(pipeline)`: commands to send first, in the same round trip (the step's
        last run events)."""
        if before is None:
            self._end(**self.end_call(run_id, record, publishes, token=token, now=now))
            return
        self.end_many(run_id, [(record, publishes)], token=token, now=now, before=before)

    def wait_turn(self, run_id: str, record: StepRecord, *, token: str, now: float) -> None:
        """End a begun step that must wait for its turn (a concurrency key's slot): its record
        written, its lease let go, and the attempt its begin counted taken back, in one round
        trip. Waiting is not an attempt: the step's next begin counts the same number again."""
        attempts = self.keys.attempts(run_id)
        self.end(run_id, record, (), token=token, now=now,
                 before=lambda pipe: pipe.hincrby(attempts, record.path, -1))

    def end_with(self, parts: list[Part]) -> None:
        """Write ends made by `end_call` (and other parts), in one round trip."""
        self.trips(parts)

    def end_many(self, run_id: str, steps: list[tuple[StepRecord, tuple[str, ...]]], *,
                 token: str, now: float, before: Callable[[Any], None] | None = None) -> None:
        """`end` for many steps of one run, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        if before is not None:
            before(pipe)
        for record, publishes in steps:
            self._end(**self.end_call(run_id, record, publishes, token=token, now=now),
                      client=pipe)
        pipe.execute()

    def end_call(self, run_id: str, record: StepRecord, publishes: tuple[str, ...], *,
                 token: str, now: float) -> dict[str, list[Any]]:
        """The end script's keys and args (`end`)."""
        return self._end_args(run_id, record, publishes, token=token, now=now)

    def end_part(self, run_id: str, record: StepRecord, publishes: tuple[str, ...], *,
                 token: str, now: float) -> Part:
        """The end as a part, to ride the next call's round trip (`begin(first=...)`,
        `RunStore.end_run(first=...)`)."""
        call = self._end_args(run_id, record, publishes, token=token, now=now)
        return ("end", call["keys"], call["args"])

    def _end_args(self, run_id: str, record: StepRecord, publishes: tuple[str, ...], *,
                  token: str, now: float) -> dict[str, list[Any]]:
        k = self.keys
        ids = publishes if record.ok else ()
        u = record.usage
        return {
            "keys": [k.steps(run_id), k.outputs(run_id), k.run(run_id), k.leases,
                     k.lease_owner, k.lease_sig, k.active, k.adm_unbilled],
            "args": [record.path, record.model_dump_json(), lease_member(run_id, record.path),
                     token, repr(now), run_id, u.prompt_tokens, u.completion_tokens, u.calls,
                     repr(getattr(u, "cost", 0.0)), _dumps(record.output), *ids],
        }

    def renew(self, held: list[tuple[str, str, str]], *, now: float,
              lease_seconds: float) -> int:
        """Extend the leases this process holds: (run id, path, token) each. One round trip."""
        if not held:
            return 0
        k = self.keys
        args: list[Any] = [repr(now + lease_seconds), repr(now)]
        for run_id, path, token in held:
            args += [lease_member(run_id, path), token, run_id]
        return int(self._renew(keys=[k.leases, k.lease_owner, k.active], args=args))

    def claim_expired(self, *, now: float, grace_seconds: float,
                      limit: int = 100) -> list[tuple[str, dict[str, Any]]]:
        """Steps whose lease ran out (their worker died): (member, signature) to dispatch again."""
        k = self.keys
        flat = self._claim(keys=[k.leases, k.lease_owner, k.lease_sig],
                           args=[repr(now), repr(now + grace_seconds), limit])
        return [(flat[i], json.loads(flat[i + 1])) for i in range(0, len(flat), 2)]
