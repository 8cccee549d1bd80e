"""The Redis run store: run records, pinned specs, the journal, and completion events.

The key layout is in `keys.py`; the step journal (memo, leases) in `journal.py`.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable, Iterator
from enum import IntEnum
from functools import lru_cache
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from legato import bridge, events, loop_redis
from legato.admission import Admission
from legato.concurrency import ConcurrencyKeys
from legato.envelope import (
    TERMINAL,
    Delivery,
    OnDone,
    RunRecord,
    StepRecord,
    StepRef,
    TerminalStatus,
    Usage,
)
from legato.errors import RunNotFound
from legato.journal import Journal
from legato.keys import Keys, lease_member, split_member
from legato.kinds.orchestrate import plan_path
from legato.loop_redis import LoopRedis
from legato.lua import Part, lua_set
from legato.publisher import EVENTS
from legato.spec import Pipeline, pipeline_from_json
from legato.tenants import Policies
from legato.voting import Ballot
from legato.waits import Waits, signal_json

# KEYS: run, idem key (or the run key again), runs index, active. ARGV: id, created_at, fields...
# A run id names one run: an existing run is never written over (a child run's id is derived
# from its parent's step, and a redelivered step must find the child it started).
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return ARGV[1] end
if KEYS[2] ~= KEYS[1] then
  local existing = redis.call('GET', KEYS[2])
  if existing then return existing end
  redis.call('SET', KEYS[2], ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
return ARGV[1]
"""

DEFAULT_RUN_TTL = 7 * 24 * 3600  # LEGATO_RUN_TTL

# The run's own keys, then (for retention) its extras set's members and its idempotency key.
# KEYS[n]: the extras set; KEYS[1..n]: the run's keys. ARGV[1]: the idempotency key prefix.
_EACH_KEY = """
local function each_key(fn, first, idem_prefix)
  local all = redis.call('SMEMBERS', KEYS[#KEYS])  -- read before `fn` may delete them
  local idem = redis.call('HGET', KEYS[first], 'idempotency_key')
  if idem then table.insert(all, idem_prefix .. idem) end
  for i = first, #KEYS do table.insert(all, KEYS[i]) end
  for _, k in ipairs(all) do fn(k) end
end
"""

# KEYS: active, waiting, ended children, callbacks, then the run's keys (Keys.of_run: the run
# hash first; its children, its event stream and its extras set last, in that order). ARGV:
# channel, status, run id, ttl (0: keep), idempotency key prefix, callbacks held until,
# field/value pairs... Terminal states are final; a finished run's keys expire after the ttl; a
# run that streamed events gets a last one, `run_finished`. Returns 0 if the run was already
# final, else {callbacks, parent run, parent step, child runs...}: `callbacks` is 2 when the run
# has callbacks (it enters the callbacks set in the same step, so they are delivered at least
# once, whoever finished it and whatever happens to that process next), else 1; a child run
# notes in `ended children` that its parent is to be told (until it is); a finished run's
# children are cancelled.
_FINISH = lua_set("TERMINAL", TERMINAL) + _EACH_KEY + """
local status = redis.call('HGET', KEYS[5], 'status')
if not status or TERMINAL[status] then
  return 0
end
local family = redis.call('HMGET', KEYS[5], 'parent_run', 'parent_step')
family[1], family[2] = family[1] or '', family[2] or ''
for _, child in ipairs(redis.call('HVALS', KEYS[#KEYS - 2])) do
  table.insert(family, child)
end
redis.call('HSET', KEYS[5], 'status', ARGV[2], unpack(ARGV, 7))
redis.call('HDEL', KEYS[5], 'waiting_for', 'waiting_since', 'awaiting', 'awaiting_since')
redis.call('ZREM', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[3])
if family[1] ~= '' then
  local now = redis.call('TIME')
  redis.call('ZADD', KEYS[3], now[1] + now[2] / 1e6, family[1] .. '|' .. family[2])
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
local events = KEYS[#KEYS - 1]  -- the run's event stream: watchers stop at this entry
if redis.call('EXISTS', events) == 1 then
  local err = redis.call('HGET', KEYS[5], 'error')
  if err then
    redis.call('XADD', events, '*', 'type', 'run_finished', 'status', ARGV[2], 'error', err)
  else
    redis.call('XADD', events, '*', 'type', 'run_finished', 'status', ARGV[2])
  end
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  each_key(function(k) redis.call('EXPIRE', k, ttl) end, 5, ARGV[5])
end
local callbacks = 1
if redis.call('HEXISTS', KEYS[5], 'on_done') == 1 then
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[3])
  callbacks = 2
end
table.insert(family, 1, callbacks)
return family
"""

# KEYS: runs index, active, waiting, then the run's keys (Keys.of_run). ARGV: run id, cutoff,
# idempotency key prefix. A finished run that finished before the cutoff goes with all its keys;
# an index entry whose run has expired goes too. Returns 1 when the run is gone.
_PRUNE = lua_set("TERMINAL", TERMINAL) + _EACH_KEY + """
local status = redis.call('HGET', KEYS[4], 'status')
if status then
  local finished = tonumber(redis.call('HGET', KEYS[4], 'finished_at') or '')
  if not TERMINAL[status] or not finished or finished >= tonumber(ARGV[2]) then return 0 end
  each_key(function(k) redis.call('DEL', k) end, 4, ARGV[3])
end
for i = 1, 3 do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
"""

# KEYS: active, callbacks, then the run's keys (Keys.of_run). ARGV: run id, now, allowed
# states (space separated), idempotency key prefix. Reopens a run for another pass: its completed
# steps are memoized, the rest run again; its keys are kept again; its callbacks wait for its
# next finish (their tries so far are dropped with the outcome they told).
_REOPEN = _EACH_KEY + """
local status = redis.call('HGET', KEYS[3], 'status')
if not status then return 'missing' end
if not string.find(' ' .. ARGV[3] .. ' ', ' ' .. status .. ' ', 1, true) then return status end
redis.call('HSET', KEYS[3], 'status', ARGV[5])
redis.call('HDEL', KEYS[3], 'error', 'finished_at', 'output', 'waiting_for', 'waiting_since',
           'awaiting', 'awaiting_since', 'deliveries')
redis.call('HINCRBY', KEYS[3], 'resumes', 1)
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
each_key(function(k) redis.call('PERSIST', k) end, 3, ARGV[4])
return 'ok'
"""

# KEYS: active (or callbacks). ARGV: cutoff, new score, limit. The members scored at or before
# the cutoff, each given the new score as it is returned (so one caller gets each).
_CLAIM_STALLED = """
local quiet = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, run_id in ipairs(quiet) do
  redis.call('ZADD', KEYS[1], ARGV[2], run_id)
end
return quiet
"""

# KEYS: run. ARGV: a Delivery's JSON. Appended to the run's `deliveries`, unless the run is gone
# (its keys expired) or was reopened (not terminal: those tries told an outcome it no longer has).
_NOTE_DELIVERY = lua_set("TERMINAL", TERMINAL) + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not TERMINAL[status] then return 0 end
local raw = redis.call('HGET', KEYS[1], 'deliveries')
local list = raw and cjson.decode(raw) or {}
table.insert(list, cjson.decode(ARGV[1]))
redis.call('HSET', KEYS[1], 'deliveries', cjson.encode(list))
return 1
"""


class Finished(IntEnum):
    """What `end_run` did; falsy when nothing (the run was terminal already)."""

    NO = 0
    YES = 1
    WITH_CALLBACKS = 2  # ...and its callbacks are due: send legato.deliver (callbacks.announce)


CALLBACK_HOLD = 30.0  # seconds a finisher has to send legato.deliver before a sweeper does


def set_aside(client: redis.Redis, keys: Keys, record: str, reason: str, *,
              keep: int = 1000) -> None:
    """Keep a poison message's excerpt (the newest `keep`) and count it, in one round trip.
    (A function, not only a RunStore method: the broker transport has its own client.)"""
    pipe = client.pipeline(transaction=False)
    pipe.lpush(keys.dead, record)
    pipe.ltrim(keys.dead, 0, keep - 1)
    pipe.hincrby(keys.poisoned, reason, 1)
    pipe.hincrby(keys.poisoned, "total", 1)
    pipe.execute()


# KEYS: run, waiting. ARGV: run id, queue, since. Marks an unfinished run as waiting for a worker
# on `queue`, unless it already is.
_MARK_WAITING = lua_set("TERMINAL", TERMINAL) + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or TERMINAL[status] or redis.call('HEXISTS', KEYS[1], 'waiting_for') == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'waiting_for', ARGV[2], 'waiting_since', ARGV[3])
redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[1])
return 1
"""


def _retryable(error: Exception) -> bool:
    """Whether retrying can mend a ConnectionError: not a wrong password, not a bad certificate."""
    return not (isinstance(error, redis.AuthenticationError | ssl.SSLError) or
                isinstance(error.__cause__ or error.__context__, ssl.SSLError))


def _retrying(is_retryable: Any) -> Callable[[Exception], bool]:
    return lambda error: _retryable(error) and (is_retryable(error) if is_retryable else True)


class _OutageRetry(Retry):
    """redis-py's Retry, minus the ConnectionErrors that retrying cannot mend."""

    def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None,
                        with_failure_count: bool = False) -> Any:
        return super().call_with_retry(do, fail, _retrying(is_retryable), with_failure_count)


class _AsyncOutageRetry(redis.asyncio.retry.Retry):
    """`_OutageRetry`, for the asyncio client."""

    async def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None,
                              with_failure_count: bool = False) -> Any:
        return await super().call_with_retry(do, fail, _retrying(is_retryable),
                                             with_failure_count)


MAX_CONNECTIONS = 128  # per process
POOL_WAIT_SECONDS = 60.0
OUTAGE_RETRIES = 20  # with _outage_backoff: about half a minute


def _outage_backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=2.0, base=0.05)


# Every pool of a client from `connect`, sync or asyncio (its retry object aside).
_POOL_OPTIONS: dict[str, Any] = {
    "decode_responses": True, "health_check_interval": 30, "socket_keepalive": True,
    "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    "max_connections": MAX_CONNECTIONS, "timeout": POOL_WAIT_SECONDS,
}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def connect(url: str) -> redis.Redis:
    """A Redis client for `url` as Legato uses it: str replies, a blocking pool, outage retries.

    Ride out a Redis restart or a dropped connection: reconnect and retry each command for about
    half a minute. The journal's scripts are safe to run again (see journal.py). A wrong password
    or an untrusted certificate is no outage: it fails at once. Many threads share the pool (a
    worker's pool threads and its fan-out threads): one that finds every connection busy waits
    for one instead of failing.
    """
    pool = redis.BlockingConnectionPool.from_url(
        url, retry=_OutageRetry(_outage_backoff(), retries=OUTAGE_RETRIES), **_POOL_OPTIONS)
    return _BridgedRedis(url, connection_pool=pool)


class _BridgedRedis(redis.Redis):
    """The sync client; in a bridged body (legato.bridge) each command is awaited on the body's
    loop instead, so it does not block the loop's thread: on the loop's one pipelined
    connection (legato.loop_redis) where it can be, else through a pooled asyncio twin. Scripts
    go through `execute_command` too; pipelines stay sync (off a segment's hot path)."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._url = url
        self._pipelined = loop_redis.handles(url)
        self._twins: tuple[Any, LoopRedis, redis.asyncio.Redis] | None = None  # (loop, ...)

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if not bridge.active():
            return super().execute_command(*args, **options)
        _, pipelined, pooled = self._on(asyncio.get_running_loop())
        if self._pipelined and loop_redis.takes(args, options):
            return bridge.wait(pipelined.execute(*args))
        return bridge.wait(pooled.execute_command(*args, **options))

    def _on(self, loop: Any) -> tuple[Any, LoopRedis, redis.asyncio.Redis]:
        """This loop's clients (made on first use there)."""
        if self._twins is None or self._twins[0] is not loop:
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self._url, retry=_AsyncOutageRetry(_outage_backoff(), retries=OUTAGE_RETRIES),
                **_POOL_OPTIONS)
            pipelined = LoopRedis(self._url, self.response_callbacks, retries=OUTAGE_RETRIES,
                                  backoff=_outage_backoff)
            self._twins = (loop, pipelined, redis.asyncio.Redis(connection_pool=pool))
        return self._twins


class RunStore:
    def __init__(self, client: redis.Redis, prefix: str = "legato", *,
                 run_ttl: float = DEFAULT_RUN_TTL, callback_hold: float = CALLBACK_HOLD) -> None:
        # Made with decode_responses=True: replies are str, which redis-py's types can't express.
        self.redis: Any = client
        self.keys = Keys(prefix)
        self.run_ttl = int(run_ttl)  # a finished run's keys expire after this (0: never)
        self.callback_hold = callback_hold
        self.journal = Journal(client, self.keys)
        self.ballot = Ballot(client, self.keys)  # quorum votes' tallies
        self.waits = Waits(client, self.keys)  # parked steps and their signals
        self._create = client.register_script(_CREATE)
        self._finish = client.register_script(_FINISH)
        self.journal.trips.add("finish", _FINISH)  # a run's last step's end rides its finish
        self.journal.trips.add("events", EVENTS)  # and a streamed step's events its end
        self._reopen = client.register_script(_REOPEN)
        self._claim_stalled = client.register_script(_CLAIM_STALLED)
        self._mark_waiting = client.register_script(_MARK_WAITING)
        self._prune = client.register_script(_PRUNE)
        self._note_delivery = client.register_script(_NOTE_DELIVERY)
        self._stored_specs: set[str] = set()
        # Sends a resumed step's signature (Celery's `app.signature(sig).apply_async()`): set by
        # a process that can send (a worker's runtime, a producer); without it the sweeper does.
        self.dispatch: Callable[[dict[str, Any]], Any] | None = None

    @classmethod
    def from_url(cls, url: str, prefix: str = "legato", *,
                 run_ttl: float = DEFAULT_RUN_TTL) -> RunStore:
        return cls(connect(url), prefix, run_ttl=run_ttl)

    @property
    def prefix(self) -> str:
        return self.keys.prefix

    # -- specs ---------------------------------------------------------------------------------

    def put_spec(self, pipeline: Pipeline) -> str:
        digest = pipeline.content_hash()
        if digest not in self._stored_specs:  # content-addressed: once per process is enough
            self.redis.set(self.keys.spec(digest), pipeline.canonical_json(), nx=True)
            self._stored_specs.add(digest)
        return digest

    def get_spec(self, digest: str) -> Pipeline:
        return _cached_spec(self.redis, self.keys.spec(digest))

    # -- runs ----------------------------------------------------------------------------------

    def create_run(self, record: RunRecord) -> str:
        """Write a new queued run; with an idempotency key already used, return that run's id."""
        k = self.keys
        fields = self._run_fields(record)
        flat = [x for kv in fields.items() for x in kv]
        idem = k.idem(record.idempotency_key) if record.idempotency_key else k.run(record.id)
        keys = [k.run(record.id), idem, k.runs, k.active]
        return str(self._create(keys=keys, args=[record.id, repr(record.created_at), *flat]))

    def add_child(self, run_id: str, path: str, child_id: str) -> None:
        """Note that the step at `path` of `run_id` started the child run `child_id`."""
        self.redis.hset(self.keys.children(run_id), path, child_id)

    def children(self, run_id: str) -> dict[str, str]:
        """The child runs a run started, by the path of the step that started each."""
        return dict(self.redis.hgetall(self.keys.children(run_id)))

    def get_run(self, run_id: str) -> RunRecord:
        raw = self.redis.hgetall(self.keys.run(run_id))
        if not raw or "id" not in raw:  # none, or fields a late writer left after it expired
            raise RunNotFound(f"no run {run_id!r}")
        return run_from_hash(raw)

    def list_runs(self, *, status: str | None = None, schedule: str | None = None,
                  tenant: str | None = None,
                  limit: int = 20) -> list[RunRecord]:
        runs: list[RunRecord] = []
        start = 0
        while len(runs) < limit:
            ids = self.redis.zrevrange(self.keys.runs, start, start + 4 * limit - 1)
            if not ids:
                break
            start += len(ids)
            pipe = self.redis.pipeline(transaction=False)
            for run_id in ids:
                pipe.hgetall(self.keys.run(run_id))
            for raw in pipe.execute():
                if raw and "id" in raw and (status is None or raw.get("status") == status) and (
                        schedule is None or raw.get("schedule") == schedule) and (
                        tenant is None or (raw.get("tenant") or "default") == tenant):
                    runs.append(run_from_hash(raw))
        return runs[:limit]

    def runs_by_time(self, high: str, low: str, *, start: int, num: int
                     ) -> list[tuple[dict[str, str], float]]:
        """Run records newest first, created in [low, high] (ZRANGEBYSCORE bounds: `(` for an
        open end, `-inf`), from the `start`th on, at most `num`, each with its creation time
        in the index; a run gone meanwhile is an empty record. Two round trips."""
        entries = self.redis.zrevrangebyscore(self.keys.runs, high, low, start=start, num=num,
                                              withscores=True)
        pipe = self.redis.pipeline(transaction=False)
        for run_id, _ in entries:
            pipe.hgetall(self.keys.run(run_id))
        return list(zip(pipe.execute(), (float(s) for _, s in entries), strict=True)) \
            if entries else []

    def event_stream(self, run_id: str) -> str:
        """The key of the run's event stream (legato.events), for readers of their own."""
        return self.keys.events(run_id)

    def mark_watched(self, run_id: str) -> None:
        """Mark the run followed for a while (legato.events.watching)."""
        events.watching(self.redis, self.keys.watched(run_id))

    def watched_key(self, run_id: str) -> str:
        """The key of the run's watched mark (legato.events.watching), for readers of their own."""
        return self.keys.watched(run_id)

    def run_key(self, run_id: str) -> str:
        """The key of the run's record (a hash; its `status` field is the run's state)."""
        return self.keys.run(run_id)

    def done_channel(self, run_id: str) -> str:
        """The pub/sub channel a run's completion is announced on (`wait` listens there)."""
        return self.keys.done(run_id)

    def run_ids_with_prefix(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Ids in the runs index that start with `prefix` (at most `limit`; a scan of the
        index, for the command line's run ids by unique prefix)."""
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix) + "*"
        found: list[str] = []
        for run_id, _ in self.redis.zscan_iter(self.keys.runs, match=pattern, count=1000):
            found.append(run_id)
            if len(found) >= limit:
                break
        return found

    def finish_run(
        self, run_id: str, status: TerminalStatus, *, output: Any = None,
        error: str | None = None
    ) -> bool:
        """Move a run to a terminal state once, and announce it. False if it already was."""
        return bool(self.end_run(run_id, status, output=output, error=error))

    def end_run(
        self, run_id: str, status: TerminalStatus, *, output: Any = None,
        error: str | None = None, first: list[Part] | None = None
    ) -> Finished:
        """`finish_run`, saying whether the run has callbacks, now due: a run that has them
        enters the callbacks set either way, and `callbacks.finish` also sends them at once.
        `first`: parts to run before, in the same round trip (the last step's end,
        `Journal.end_part`)."""
        if status not in TERMINAL:
            raise ValueError(f"{status!r} is not a terminal state ({', '.join(sorted(TERMINAL))})")
        now = time.time()
        fields = {"finished_at": repr(now), "output": _dumps(output)}
        if error is not None:
            fields["error"] = error
        flat = [x for kv in fields.items() for x in kv]
        args = [self.keys.done(run_id), status, run_id, repr(self.run_ttl),
                self.keys.idem(""), repr(now + self.callback_hold), *flat]
        keys = [self.keys.active, self.keys.waiting, self.keys.ended_children,
                self.keys.callbacks, *self.keys.of_run(run_id)]
        if not first:
            reply = self._finish(keys=keys, args=args)
        else:
            reply = self.journal.trips([*first, ("finish", keys, args)])[-1]
        if not reply:
            return Finished.NO
        callbacks, parent_run, parent_step, *children = reply
        for child in children:  # unfinished ones stop with their parent (and theirs with them)
            if self.finish_run(child, "cancelled", error=f"its parent run {run_id} {status}"):
                self.waits.forget(child)
        if parent_run:
            self.tell_parent(StepRef(run_id=parent_run, path=parent_step))
        return Finished(int(callbacks))

    def tell_parent(self, parent: StepRef) -> None:
        """Signal the `pipeline` step that started a child run which has ended, through the
        waits primitive (stored once; the parked step resumed once, by whoever holds its entry:
        this process if it can send, else the sweeper). Then the child's note is crossed off;
        a process that dies before that leaves it for the sweeper to tell again."""
        now = time.time()
        done = self.waits.signal(parent.run_id, parent.path,
                                 signal_json({"child_ended": True}, at=now), now=now)
        if done.state == "resumed" and done.resume is not None and self.dispatch is not None:
            self.dispatch(done.resume)
            self.waits.confirm(parent.run_id, parent.path)
        self.redis.zrem(self.keys.ended_children, lease_member(parent.run_id, parent.path))

    def untold_parents(self, *, older_than: float, limit: int = 100) -> list[StepRef]:
        """Parents of child runs that ended over `older_than` seconds ago and were not told
        (the process finishing the child died first): the sweeper tells them."""
        cutoff = time.time() - older_than
        members = self.redis.zrangebyscore(self.keys.ended_children, "-inf", cutoff,
                                           start=0, num=limit)
        return [StepRef(run_id=r, path=p) for r, p in map(split_member, members)]

    def reopen_run(self, run_id: str, *, allowed: tuple[str, ...],
                   status: str = "running") -> str:
        """Set a run in one of `allowed` states going again (`status`: running, or queued for
        admission); returns 'ok' or its state."""
        args = [run_id, repr(time.time()), " ".join(allowed), self.keys.idem(""), status]
        return str(self._reopen(keys=[self.keys.active, self.keys.callbacks,
                                      *self.keys.of_run(run_id)], args=args))

    # -- callbacks (pipeline/callbacks.py) -----------------------------------------------------

    def claim_callbacks(self, *, hold: float, limit: int = 50) -> list[str]:
        """Finished runs whose callbacks nobody is delivering (their holder's time is up), each
        held for `hold` seconds more as it is returned, so two sweepers never claim one run."""
        now = time.time()
        return list(self._claim_stalled(keys=[self.keys.callbacks],
                                        args=[repr(now), repr(now + hold), limit]))

    def hold_callbacks(self, run_id: str, *, until: float) -> None:
        """The caller is delivering the run's callbacks until `until` (then a sweeper may)."""
        self.redis.zadd(self.keys.callbacks, {run_id: until}, xx=True)

    def callbacks_done(self, run_id: str) -> None:
        """Every callback of the run was delivered, or given up on."""
        self.redis.zrem(self.keys.callbacks, run_id)

    def note_delivery(self, run_id: str, delivery: Delivery) -> bool:
        """Add a try to the run's record (False: the run is gone, or running again)."""
        return bool(self._note_delivery(keys=[self.keys.run(run_id)],
                                        args=[delivery.model_dump_json()]))

    def prune(self, *, older_than: float, now: float | None = None, batch: int = 500) -> int:
        """Delete the runs that finished over `older_than` seconds ago, with every key of theirs,
        and the index entries of runs whose keys already expired; returns how many went."""
        cutoff = (now if now is not None else time.time()) - older_than
        gone = kept = 0
        while True:  # oldest first, by creation: a run finished at or after it was made
            ids = self.redis.zrangebyscore(self.keys.runs, "-inf", cutoff, start=kept, num=batch)
            for run_id in ids:
                keys = [self.keys.runs, self.keys.active, self.keys.waiting,
                        *self.keys.of_run(run_id)]
                if self._prune(keys=keys, args=[run_id, repr(cutoff), self.keys.idem("")]):
                    gone += 1
                else:
                    kept += 1
            if len(ids) < batch:
                return gone

    def claim_stalled(self, *, quiet_for: float, limit: int = 50) -> list[str]:
        """Unfinished runs with no sign of life (no step begun, ended or heartbeat) for a while,
        marked alive again as they are returned, so two sweepers never recover the same run."""
        now = time.time()
        return list(self._claim_stalled(keys=[self.keys.active],
                                        args=[repr(now - quiet_for), repr(now), limit]))

    def bump(self, run_id: str, field: str) -> int:
        return int(self.redis.hincrby(self.keys.run(run_id), field, 1))

    def forget_active(self, run_id: str) -> None:
        """Stop watching a run for signs of life (its record is gone: nothing to recover)."""
        self.redis.zrem(self.keys.active, run_id)

    @staticmethod
    def _run_fields(record: RunRecord) -> dict[str, str]:
        data = record.model_dump(exclude={"usage", "input", "output", "on_done", "deliveries",
                                          "tags"}, exclude_none=True)
        out = {k: (repr(v) if isinstance(v, float) else str(v)) for k, v in data.items()}
        out["input"] = _dumps(record.input)
        if record.on_done is not None:
            out["on_done"] = record.on_done.model_dump_json(exclude_none=True)
        if record.tags:
            out["tags"] = _dumps(record.tags)
        return out

    # -- schedules (pipeline/schedules.py) -----------------------------------------------------

    def claim_tick(self, schedule: str, tick: str, *, ttl: int) -> bool:
        """Whether this caller is the first to claim the schedule's tick (kept `ttl` seconds)."""
        return bool(self.redis.set(self.keys.schedule_tick(schedule, tick), "1", nx=True,
                                   ex=ttl))

    def schedule_state(self, schedule: str) -> dict[str, str]:
        """last_run, last_tick, fired, skipped, last_skipped, last_error."""
        return dict(self.redis.hgetall(self.keys.schedule(schedule)))

    def note_tick(self, schedule: str, counter: str, **fields: str) -> None:
        """Count a tick under `counter` (fired, skipped, failed) and set `fields`."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(self.keys.schedule(schedule), counter, 1)
        if fields:
            pipe.hset(self.keys.schedule(schedule), mapping=fields)
        pipe.execute()
    def tenant_of(self, run_id: str) -> str:
        return str(self.redis.hget(self.keys.run(run_id), "tenant") or "default")

    # -- admission and concurrency keys (their own modules, over this store's client) ----------

    def admission(self, policies: Policies) -> Admission:
        """Admission by fair share under `policies` (legato.admission)."""
        return Admission(self.redis, self.keys, policies)

    def concurrency_keys(self) -> ConcurrencyKeys:
        """Concurrency keys' slots (legato.concurrency)."""
        return ConcurrencyKeys(self.redis, self.keys)

    # -- steps ---------------------------------------------------------------------------------

    def skip_step(self, run_id: str, record: StepRecord) -> None:
        """Journal a step that will not run (e.g. a voter after the quorum), unless it ran."""
        self.redis.hsetnx(self.keys.steps(run_id), record.path, record.model_dump_json())

    # -- queues and their consumers ---------------------------------------------------------------

    def advertise(self, worker: str, queues: list[str], *, now: float, ttl: float) -> None:
        """`worker` consumes `queues` for the next `ttl` seconds (renewed by its sweeper)."""
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            pipe.zadd(self.keys.consumers(queue), {worker: now + ttl})
            pipe.zremrangebyscore(self.keys.consumers(queue), "-inf", now)
        pipe.execute()

    def withdraw(self, worker: str, queues: list[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            pipe.zrem(self.keys.consumers(queue), worker)
        pipe.execute()

    def served(self, queues: list[str], *, now: float) -> dict[str, bool]:
        """Whether each queue has a live consumer, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            pipe.zcount(self.keys.consumers(queue), now, "+inf")
        return {q: n > 0 for q, n in zip(queues, pipe.execute(), strict=True)}

    def mark_waiting(self, run_id: str, queue: str, *, since: float) -> bool:
        """Note that a step of the run was sent to `queue`, which no live worker serves."""
        return bool(self._mark_waiting(keys=[self.keys.run(run_id), self.keys.waiting],
                                       args=[run_id, queue, repr(since)]))

    def waiting_runs(self, limit: int = 200) -> list[tuple[str, float]]:
        """Runs marked waiting, oldest first, with since when."""
        return [(str(m), float(s)) for m, s in
                self.redis.zrange(self.keys.waiting, 0, limit - 1, withscores=True)]

    def clear_waiting(self, run_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(self.keys.run(run_id), "waiting_for", "waiting_since")
        pipe.zrem(self.keys.waiting, run_id)
        pipe.execute()

    def set_aside(self, record: str, reason: str, *, keep: int = 1000) -> None:
        """A poison message set aside: see `set_aside`."""
        set_aside(self.redis, self.keys, record, reason, keep=keep)

    def fail_step(self, run_id: str, record: StepRecord) -> None:
        """Journal a step that failed outside its work (a task's own code raised, a canvas
        could not be built), unless it had already succeeded."""
        key = self.keys.steps(run_id)
        raw = self.redis.hget(key, record.path)
        if raw is None or not StepRecord.model_validate_json(raw).ok:
            self.redis.hset(key, record.path, record.model_dump_json())

    def get_step(self, run_id: str, path: str) -> StepRecord | None:
        raw = self.redis.hget(self.keys.steps(run_id), path)
        return StepRecord.model_validate_json(raw) if raw else None

    def get_steps_at(self, run_id: str, paths: list[str]) -> list[StepRecord]:
        """The records at `paths`, in order, in one round trip. KeyError if one is missing."""
        raws = self.redis.hmget(self.keys.steps(run_id), paths) if paths else []
        missing = [p for p, raw in zip(paths, raws, strict=True) if raw is None]
        if missing:
            raise KeyError(f"no journal record for {missing}")
        return [StepRecord.model_validate_json(raw) for raw in raws]

    def subtasks(self, run_id: str, node: str, rounds: int) -> list[Any]:
        """An orchestrate step's subtasks, rounds 0..`rounds`, in order, from its plan records
        (one round trip)."""
        records = self.get_steps_at(run_id, [plan_path(node, r) for r in range(rounds + 1)])
        return [t for r in records for t in (r.output or {}).get("subtasks", [])]

    def get_steps(self, run_id: str) -> list[StepRecord]:
        raw = self.redis.hgetall(self.keys.steps(run_id))
        records = [StepRecord.model_validate_json(v) for v in raw.values()]
        return sorted(records, key=lambda r: (r.started_at or 0, r.path))

    def events(self, run_id: str, *, last_id: str | None = None,
               follow: bool = True) -> Iterator[events.Event]:
        """The run's event stream (legato.events) after `last_id`, ending with the run."""
        def finished() -> str | None:
            status = self.get_run(run_id).status
            return status if status in TERMINAL else None

        return events.read(self.redis, self.keys, run_id, last_id=last_id, finished=finished,
                           follow=follow)

    def get_outputs(self, run_id: str) -> dict[str, Any]:
        raw = self.redis.hgetall(self.keys.outputs(run_id))
        return {k: json.loads(v) for k, v in raw.items()}

    # -- MCP tools: the lists a run pinned, the calls it journaled (pipeline/tools/mcp.py) -----

    def pinned_tools(self, run_id: str, server: str) -> str | None:
        return self.redis.hget(self.keys.mcp_tools(run_id), server)

    def pin_tools(self, run_id: str, server: str, listing: str) -> str:
        """Pin `listing` as the run's tool list of `server` unless one is pinned; the pinned."""
        key = self.keys.mcp_tools(run_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(key, server, listing)
        pipe.sadd(self.keys.run_extras(run_id), key)  # expires with the run
        pipe.hget(key, server)
        return str(pipe.execute()[-1])

    def tool_call(self, run_id: str, key: str) -> str | None:
        return self.redis.hget(self.keys.tool_calls(run_id), key)

    def record_tool_call(self, run_id: str, key: str, entry: str) -> None:
        journal = self.keys.tool_calls(run_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(journal, key, entry)
        pipe.sadd(self.keys.run_extras(run_id), journal)
        pipe.execute()

    # -- evals: the runs an eval made (pipeline/evals/) ----------------------------------------

    def add_eval_run(self, eval_id: str, run_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.keys.evals, {eval_id: time.time()}, nx=True)
        pipe.sadd(self.keys.eval_runs(eval_id), run_id)
        pipe.execute()

    def eval_runs(self, eval_id: str) -> list[str]:
        return sorted(self.redis.smembers(self.keys.eval_runs(eval_id)))

    def delete_eval_run(self, eval_id: str, run_id: str) -> None:
        """Delete a finished run of an eval with every key of its, and its index entries."""
        extras = self.redis.smembers(self.keys.run_extras(run_id))
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(*self.keys.of_run(run_id), *extras)
        for index in (self.keys.runs, self.keys.active, self.keys.waiting):
            pipe.zrem(index, run_id)
        pipe.srem(self.keys.eval_runs(eval_id), run_id)
        pipe.execute()

    def forget_eval(self, eval_id: str) -> None:
        self.redis.zrem(self.keys.evals, eval_id)

    # -- waiting -------------------------------------------------------------------------------

    def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        """Block until the run is terminal (listening for its event, not polling Celery)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.keys.done(run_id))
            while True:
                record = self.get_run(run_id)  # after subscribing, so no event is missed
                if record.status in TERMINAL:
                    return record
                left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if left <= 0:
                    raise TimeoutError(f"run {run_id} still {record.status} after {timeout}s")
                try:
                    pubsub.get_message(timeout=left)
                except redis.ConnectionError:  # Redis restarted: subscribe again, read again
                    time.sleep(min(left, 0.5))
                    pubsub.close()
                    pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.keys.done(run_id))
        finally:
            pubsub.close()


@lru_cache(maxsize=128)
def _cached_spec(client: Any, key: str) -> Pipeline:
    # Specs are content-addressed, hence immutable: cache them for the life of the process.
    raw = client.get(key)
    if raw is None:
        raise KeyError(f"no pinned spec at {key}")
    return pipeline_from_json(raw).pin()


def run_from_hash(raw: dict[str, str]) -> RunRecord:
    def num(name: str) -> float | None:
        return float(raw[name]) if raw.get(name) else None

    return RunRecord(
        id=raw["id"],
        pipeline=raw["pipeline"],
        spec_hash=raw["spec_hash"],
        status=raw["status"],  # type: ignore[arg-type]
        input=json.loads(raw.get("input") or "null"),
        output=json.loads(raw["output"]) if raw.get("output") else None,
        error=raw.get("error"),
        created_at=float(raw["created_at"]),
        started_at=num("started_at"),
        finished_at=num("finished_at"),
        idempotency_key=raw.get("idempotency_key"),
        resumes=int(raw.get("resumes", 0)),
        waiting_for=raw.get("waiting_for") or None,
        waiting_since=num("waiting_since"),
        awaiting=raw.get("awaiting") or None,
        awaiting_since=num("awaiting_since"),
        parent_run=raw.get("parent_run") or None,
        parent_step=raw.get("parent_step") or None,
        depth=int(raw.get("depth", 0)),
        on_done=OnDone.model_validate_json(raw["on_done"]) if raw.get("on_done") else None,
        deliveries=[Delivery.model_validate(d)
                    for d in json.loads(raw.get("deliveries") or "[]")],
        schedule=raw.get("schedule") or None,
        tenant=raw.get("tenant") or "default",
        priority=int(raw.get("priority") or 0),
        held=raw.get("held") or None,
        admitted_at=num("admitted_at"),
        tags=json.loads(raw["tags"]) if raw.get("tags") else {},
        usage=Usage(
            prompt_tokens=int(raw.get("prompt_tokens", 0)),
            completion_tokens=int(raw.get("completion_tokens", 0)),
            calls=int(raw.get("calls", 0)),
            cost=float(raw.get("cost", 0.0)),
        ),
    )
