"""Admission: runs wait in Redis for their tenant's fair share, and are released into Celery.

With a tenants file (LEGATO_TENANTS_FILE, legato.tenants), a submitted run is not sent at once:
it joins its tenant's held set (by priority, then order of arrival) and one Lua script releases
what fits — while fewer than `capacity` runs are in flight, the tenant whose tokens in the sliding
window plus its runs in flight (at its average run's tokens) are lowest per unit of weight, under
its `max_concurrent_runs` and spend cap, gets its best held run. Whoever ran the script sends
what it released: the producer at submit, the worker that finished a run (`settle`), the sweeper
as a backstop (`reconcile`). A flood waits in Redis, not in Celery's queues, so it does not bury
other tenants' messages.

Exactly once: releasing is atomic (a run leaves the held set in the script that admits it), and
sending is recoverable — a released run is watched for signs of life like any other, so one whose
sender died before sending is sent again by the stall recovery (LEGATO_STALL_SECONDS); a second
copy of a message runs nothing twice (the journal). A run's tokens and cost are charged to its
tenant when it ends (no cost on the hot path), so a spend cap may be passed by the runs in flight
when it is reached.

Child runs (`pipeline` steps, legato.tasks.children) are their parent's tenant's but pass no
admission: the parent holds the slot while it waits for them (a child held for a slot that only
its waiting parent frees would never start). A child's usage is charged to the tenant when the
child ends (`settle`), not counted as one of the tenant's runs; a run's settle also charges its
descendants that ended uncharged (cancelled with it, or their worker died before their own
settle). A run is charged what it used since it was last billed, so a settle again charges only
usage added since: a step whose call was in flight when its run was cancelled adds its tokens at
its end, which marks the run `unbilled`, and the sweeper's `reconcile` bills it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.canvas import Signature

from legato.compile import Compiler
from legato.envelope import TERMINAL
from legato.keys import Keys
from legato.lua import lua_set
from legato.tenants import Policies

log = logging.getLogger("legato.admission")

# KEYS: policy, running, count, tenants, seq, active.
# ARGV: admission key base, run key prefix, now, day, month, run id, then admit's tenant, priority.
_COMMON = """
local base, runp, now, day, month = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local policy = {}
local raw = redis.call('HGETALL', KEYS[1])
for i = 1, #raw, 2 do policy[raw[i]] = raw[i + 1] end
local function pol(t, f)
  local v = policy[t .. '|' .. f]
  if v == nil then v = policy['*|' .. f] end
  return v
end
local capacity = tonumber(policy['capacity'] or '100')
local window = tonumber(policy['window'] or '60')
local bucket = window / 10
local function run_key(id) return runp .. '{' .. id .. '}' end

local function used(t)  -- tokens and runs that ended in the window (older buckets dropped)
  local key = base .. 'used:' .. t
  local f = redis.call('HGETALL', key)
  local tokens, runs, oldest = 0, 0, math.floor(now / bucket) - 9
  for i = 1, #f, 2 do
    local b, kind = string.match(f[i], '^(%-?%d+):(%a)$')
    if b and tonumber(b) >= oldest then
      local n = tonumber(f[i + 1])
      if kind == 't' then tokens = tokens + n else runs = runs + n end
    else
      redis.call('HDEL', key, f[i])
    end
  end
  return tokens, runs
end

local function capped(t)  -- why the tenant may start nothing now, or nil
  local dcap, mcap = tonumber(pol(t, 'day') or '0'), tonumber(pol(t, 'month') or '0')
  local spend = base .. 'spend:' .. t
  if dcap > 0 then
    local d = tonumber(redis.call('GET', spend .. ':d:' .. day) or '0')
    if d >= dcap then
      return string.format('tenant %s reached its daily spend cap (%.4f of %.4f)', t, d, dcap)
    end
  end
  if mcap > 0 then
    local m = tonumber(redis.call('GET', spend .. ':m:' .. month) or '0')
    if m >= mcap then
      return string.format('tenant %s reached its monthly spend cap (%.4f of %.4f)', t, m, mcap)
    end
  end
  return nil
end

local function charge(t, tokens, cost, runs)
  local key, b = base .. 'used:' .. t, math.floor(now / bucket)
  redis.call('HINCRBY', key, b .. ':t', tokens)
  redis.call('HINCRBY', key, b .. ':r', runs)
  redis.call('EXPIRE', key, math.ceil(window * 2) + 60)
  if cost > 0 then
    local spend = base .. 'spend:' .. t
    redis.call('INCRBYFLOAT', spend .. ':d:' .. day, cost)
    redis.call('EXPIRE', spend .. ':d:' .. day, 3 * 86400)
    redis.call('INCRBYFLOAT', spend .. ':m:' .. month, cost)
    redis.call('EXPIRE', spend .. ':m:' .. month, 63 * 86400)
  end
end

local function release()  -- {id, spec hash, ...} of the runs admitted now
  local out, state, all_tokens, all_runs = {}, {}, 0, 0
  local running = redis.call('HLEN', KEYS[2])
  if running >= capacity then return out end
  for _, t in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    local held = base .. 'held:' .. t
    if redis.call('ZCARD', held) == 0 then
      redis.call('SREM', KEYS[4], t)
    elseif not capped(t) then
      local tokens, runs = used(t)
      all_tokens, all_runs = all_tokens + tokens, all_runs + runs
      state[#state + 1] = {t = t, held = held, tokens = tokens, runs = runs,
        n = tonumber(redis.call('HGET', KEYS[3], t) or '0'),
        max = tonumber(pol(t, 'max') or '0'), w = tonumber(pol(t, 'weight') or '1')}
    end
  end
  -- a run in flight counts as its tenant's average run; a tenant with none ended yet, as the
  -- others' average (else the file's guess)
  local guess = tonumber(policy['run_tokens'] or '1000')
  if all_runs > 0 then guess = math.max(1, all_tokens / all_runs) end
  for _, s in ipairs(state) do
    s.est = s.runs > 0 and math.max(1, s.tokens / s.runs) or guess
  end
  while running < capacity do
    local best, score = nil, nil
    for _, s in ipairs(state) do
      if s.held and (s.max == 0 or s.n < s.max) then
        local v = (s.tokens + s.n * s.est) / s.w
        if best == nil or v < score then best, score = s, v end
      end
    end
    if best == nil then break end
    local popped = redis.call('ZPOPMIN', best.held)
    if #popped == 0 then
      best.held = nil
    else
      local id = popped[1]
      local rk = run_key(id)
      if redis.call('HGET', rk, 'status') == 'queued' then  -- not cancelled while it waited
        redis.call('HSET', KEYS[2], id, best.t)
        redis.call('HINCRBY', KEYS[3], best.t, 1)
        redis.call('HDEL', rk, 'held')
        redis.call('HSET', rk, 'admitted_at', ARGV[3])
        redis.call('HINCRBY', rk, 'admissions', 1)  -- once per submit (and resume)
        redis.call('ZADD', KEYS[6], now, id)  -- watched for signs of life from now on
        best.n, running = best.n + 1, running + 1
        out[#out + 1] = id
        out[#out + 1] = redis.call('HGET', rk, 'spec_hash')
      end
    end
  end
  return out
end
"""

# Admit one new run: {'capped', why} (its tenant's cap says fail), else {'ok', why it waits
# ('' if released now), released id, hash, ...}.
_ADMIT = _COMMON + """
local id, t, prio = ARGV[6], ARGV[7], tonumber(ARGV[8])
local why = capped(t)
if why and (pol(t, 'on_cap') or 'fail') == 'fail' then return {'capped', why} end
local seq = redis.call('INCR', KEYS[5])
redis.call('ZADD', base .. 'held:' .. t, -prio * 1e12 + seq, id)
redis.call('SADD', KEYS[4], t)
redis.call('ZREM', KEYS[6], id)  -- a held run is not stalled: it is waiting its turn
local out = release()
local mine = false
for i = 1, #out, 2 do if out[i] == id then mine = true end end
local reason = ''
if not mine then
  local n, max = tonumber(redis.call('HGET', KEYS[3], t) or '0'), tonumber(pol(t, 'max') or '0')
  if why then
    reason = 'held: ' .. why
  elseif max > 0 and n >= max then
    reason = string.format('waiting for admission: tenant %s has %d of %d runs in flight',
      t, n, max)
  else
    reason = string.format('waiting for admission: the cluster runs %d at once, %s',
      capacity, 'shared by weight')
  end
  redis.call('HSET', run_key(id), 'held', reason)
end
local reply = {'ok', reason}
for _, v in ipairs(out) do reply[#reply + 1] = v end
return reply
"""

# A run ended (ARGV[6], or '' for none): free its slot and charge its tokens and cost to its
# tenant (or drop it from the held set, if it was cancelled there; or, a child run, charge its
# usage to its tenant); then charge its descendants that ended (a child cancelled with its parent
# ends in the store's finish, with no settle of its own; one whose worker died before its settle
# is charged here too); then release what fits. Every charge is what the run used since it was
# last billed (`billed_tokens`, `billed_cost`), so a settle again charges only what was added
# since: by a step in flight when the run ended (the journal's end marks it `unbilled`).
_SETTLE = _COMMON + lua_set("TERMINAL", TERMINAL) + """
local function bill(t, rk, runs)  -- to tenant t, what run rk used since it was last billed
  local r = redis.call('HMGET', rk, 'prompt_tokens', 'completion_tokens', 'cost',
    'billed_tokens', 'billed_cost')
  local tokens, cost = (tonumber(r[1]) or 0) + (tonumber(r[2]) or 0), tonumber(r[3]) or 0
  local more, spent = tokens - (tonumber(r[4]) or 0), cost - (tonumber(r[5]) or 0)
  if runs > 0 or more ~= 0 or spent > 0 then charge(t, more, spent, runs) end
  if redis.call('EXISTS', rk) == 1 then
    redis.call('HSET', rk, 'billed_tokens', tokens, 'billed_cost', cost)
  end
end
local function charge_child(t, rk)  -- an ended child run's usage, to its tenant
  if TERMINAL[redis.call('HGET', rk, 'status')] then bill(t, rk, 0) end
end
local function charge_family(t, id)
  local todo, seen = {id}, 0
  while #todo > 0 and seen < 10000 do
    local kids = redis.call('HVALS', run_key(table.remove(todo)) .. ':children')
    for _, kid in ipairs(kids) do
      seen = seen + 1
      charge_child(t, run_key(kid))
      todo[#todo + 1] = kid
    end
  end
end
local id = ARGV[6]
if id ~= '' then
  local t = redis.call('HGET', KEYS[2], id)
  local rk = run_key(id)
  redis.call('ZREM', base .. 'unbilled', id)  -- billed here, up to now
  if t then
    redis.call('HDEL', KEYS[2], id)
    if redis.call('HINCRBY', KEYS[3], t, -1) <= 0 then redis.call('HDEL', KEYS[3], t) end
    bill(t, rk, 1)  -- what it used since it was last billed (a resumed run was, when it ended)
  else
    local r = redis.call('HMGET', rk, 'tenant', 'parent_run', 'billed_tokens')
    t = r[1] or 'default'
    if r[2] then  -- a child run: never admitted (its parent was); its usage is charged to its
      -- tenant (its parent's), and it is no run of the tenant's own in the averages
      charge_child(t, rk)
    elseif redis.call('ZREM', base .. 'held:' .. t, id) == 1 then
      redis.call('HDEL', rk, 'held')  -- cancelled while it waited: it waits no more
    elseif r[3] and TERMINAL[redis.call('HGET', rk, 'status')] then
      bill(t, rk, 0)  -- settled before: what a step in flight at its end added since
    end
  end
  charge_family(t, id)
end
return release()
"""

Released = list[tuple[str, str]]  # (run id, spec hash) of runs to send now


@dataclass
class Admitted:
    capped: str | None = None  # the run must fail: its tenant's spend cap says so
    held: str | None = None  # why it waits, if it was not released at once
    released: Released = field(default_factory=list)


def _pairs(flat: list[Any]) -> Released:
    return [(str(flat[i]), str(flat[i + 1])) for i in range(0, len(flat), 2)]


def _day_month(now: float) -> tuple[str, str]:
    utc = time.gmtime(now)
    return time.strftime("%Y%m%d", utc), time.strftime("%Y%m", utc)


class Admission:
    """One process's handle on admission (the scripts; the policy it published)."""

    def __init__(self, redis: Any, keys: Keys, policies: Policies) -> None:
        self.redis = redis
        self.keys = keys
        self.policies = policies
        self._admit = redis.register_script(_ADMIT)
        self._settle = redis.register_script(_SETTLE)
        self.publish()

    def publish(self) -> None:
        """Write this process's policy where the scripts read it (one file for the cluster)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.adm_policy)
        pipe.hset(self.keys.adm_policy, mapping=self.policies.flat())
        pipe.execute()

    def _keys(self) -> list[str]:
        k = self.keys
        return [k.adm_policy, k.adm_running, k.adm_count, k.adm_tenants, k.adm_seq, k.active]

    def _args(self, run_id: str, now: float | None) -> list[str]:
        now = time.time() if now is None else now
        day, month = _day_month(now)
        return [self.keys.adm_base, self.keys.run_prefix, repr(now), day, month, run_id]

    def admit(self, run_id: str, tenant: str, priority: int, *,
              now: float | None = None) -> Admitted:
        """Hold a new (queued) run for its turn, and release what fits: one round trip."""
        reply = self._admit(keys=self._keys(),
                            args=[*self._args(run_id, now), tenant, str(priority)])
        if reply[0] == "capped":
            return Admitted(capped=str(reply[1]))
        return Admitted(held=str(reply[1]) or None, released=_pairs(reply[2:]))

    def settle(self, run_id: str | None = None, *, now: float | None = None) -> Released:
        """The run ended (or None: nothing did): free its slot, charge its usage to its tenant,
        release what fits. One round trip; safe to repeat."""
        return _pairs(self._settle(keys=self._keys(), args=self._args(run_id or "", now)))

    def in_flight(self) -> dict[str, str]:
        """Admitted runs not yet settled: run id -> tenant."""
        return dict(self.redis.hgetall(self.keys.adm_running))

    def reconcile(self) -> Released:
        """The sweeper's backstop: settle the admitted runs that ended without being settled (a
        worker died in between, a run failed by the sweeper) and the ended runs a step added
        usage to after their settle (`unbilled`), then release what fits."""
        unbilled = self.redis.zrange(self.keys.adm_unbilled, 0, 999)
        ids = list(dict.fromkeys([*self.in_flight(), *unbilled]))
        released: Released = []
        if ids:
            pipe = self.redis.pipeline(transaction=False)
            for run_id in ids:
                pipe.hget(self.keys.run(run_id), "status")
            for run_id, status in zip(ids, pipe.execute(), strict=True):
                if status is None or status in TERMINAL:  # (a resumed run still running is
                    released += self.settle(run_id)  # left marked: its own settle bills it)
        return released + self.settle()


def send(app: Celery, store: Any, released: Released, *,
         batch_size: int | None = None) -> dict[str, Signature]:
    """Send the released runs' canvases; their signatures by run id. A run that cannot be sent
    now is logged and left to the stall recovery (it is watched from its release on)."""
    sent: dict[str, Signature] = {}
    for run_id, digest in released:
        try:
            canvas = Compiler(app, run_id, digest, batch_size=batch_size).run(
                store.get_spec(digest))
            canvas.apply_async()
            sent[run_id] = canvas
        except Exception:
            log.exception("could not send admitted run %s; the stall recovery will", run_id)
    return sent

