"""The Redis run store: run records, pinned specs, the step journal, and completion events.

Keys (prefix `legato` by default; `{run}` is a hash tag so a run's keys share a cluster slot):

    legato:spec:<hash>            pinned pipeline JSON, written once per content hash
    legato:run:{<id>}             hash: the run record
    legato:run:{<id>}:steps       hash: step path -> StepRecord JSON (the journal)
    legato:run:{<id>}:outputs     hash: step id -> output JSON (what templates read)
    legato:runs                   sorted set: run ids by creation time
    legato:idem:<key>             idempotency key -> run id
    legato:done:<id>              pub/sub channel: the run reached a terminal state

Round trips per step: one to begin (a Lua script: memo check, running record, reads) and one to
end (a pipeline: journal, outputs, usage counters).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import redis

from pipeline.envelope import RunRecord, StepRecord, Usage
from pipeline.errors import RunNotFound
from pipeline.spec import Pipeline, pipeline_from_json

# KEYS: run, steps, outputs. ARGV: path, running record, now, ids to read...
# Returns {state, input, done-record-or-empty, outputs...}.
_BEGIN = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if status == 'cancelled' then return {'cancelled'} end
local prior = redis.call('HGET', KEYS[2], ARGV[1])
if prior and string.find(prior, '"status":"succeeded"', 1, true) then
  return {'done', '', prior}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[3])
end
local reply = {'go', redis.call('HGET', KEYS[1], 'input'), ''}
for i = 4, #ARGV do
  reply[#reply + 1] = redis.call('HGET', KEYS[3], ARGV[i]) or ''
end
return reply
"""

# KEYS: run, idem key (or a dummy), runs index. ARGV: run id, created_at, field/value pairs...
_CREATE = """
if KEYS[2] ~= '' and KEYS[2] ~= KEYS[1] then
  local existing = redis.call('GET', KEYS[2])
  if existing then return existing end
  redis.call('SET', KEYS[2], ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return ARGV[1]
"""

# KEYS: run. ARGV: channel, status, field/value pairs... Terminal states are final.
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], unpack(ARGV, 3))
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""


@dataclass
class Begin:
    """What a step sees when it starts: go ahead (with its inputs), already done, or stop."""

    state: str  # go | done | cancelled | missing
    input: Any = None
    outputs: dict[str, Any] = field(default_factory=dict)
    prior: StepRecord | None = None


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class RunStore:
    def __init__(self, client: redis.Redis, prefix: str = "legato") -> None:
        # Made with decode_responses=True: replies are str, which redis-py's types can't express.
        self.redis: Any = client
        self.prefix = prefix
        self._begin = client.register_script(_BEGIN)
        self._create = client.register_script(_CREATE)
        self._finish = client.register_script(_FINISH)

    @classmethod
    def from_url(cls, url: str, prefix: str = "legato") -> RunStore:
        client = redis.Redis.from_url(
            url, decode_responses=True, health_check_interval=30, socket_keepalive=True
        )
        return cls(client, prefix)

    # -- keys ----------------------------------------------------------------------------------

    def run_key(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}"

    def steps_key(self, run_id: str) -> str:
        return f"{self.run_key(run_id)}:steps"

    def outputs_key(self, run_id: str) -> str:
        return f"{self.run_key(run_id)}:outputs"

    def done_channel(self, run_id: str) -> str:
        return f"{self.prefix}:done:{run_id}"

    # -- specs ---------------------------------------------------------------------------------

    def put_spec(self, pipeline: Pipeline) -> str:
        digest = pipeline.content_hash()
        self.redis.set(f"{self.prefix}:spec:{digest}", pipeline.canonical_json(), nx=True)
        return digest

    def get_spec(self, digest: str) -> Pipeline:
        return _cached_spec(self.redis, self.prefix, digest)

    # -- runs ----------------------------------------------------------------------------------

    def create_run(self, record: RunRecord) -> str:
        """Write a new queued run; with an idempotency key already used, return that run's id."""
        fields = self._run_fields(record)
        flat = [x for kv in fields.items() for x in kv]
        idem = f"{self.prefix}:idem:{record.idempotency_key}" if record.idempotency_key else ""
        keys = [self.run_key(record.id), idem or self.run_key(record.id), f"{self.prefix}:runs"]
        return str(self._create(keys=keys, args=[record.id, record.created_at, *flat]))

    def delete_run(self, run_id: str) -> None:
        self.redis.delete(self.run_key(run_id), self.steps_key(run_id), self.outputs_key(run_id))
        self.redis.zrem(f"{self.prefix}:runs", run_id)

    def get_run(self, run_id: str) -> RunRecord:
        raw = self.redis.hgetall(self.run_key(run_id))
        if not raw:
            raise RunNotFound(f"no run {run_id!r}")
        return _run_from_hash(raw)

    def list_runs(self, *, status: str | None = None, limit: int = 20) -> list[RunRecord]:
        runs: list[RunRecord] = []
        start = 0
        while len(runs) < limit:
            ids = self.redis.zrevrange(f"{self.prefix}:runs", start, start + 4 * limit - 1)
            if not ids:
                break
            start += len(ids)
            pipe = self.redis.pipeline(transaction=False)
            for run_id in ids:
                pipe.hgetall(self.run_key(run_id))
            for raw in pipe.execute():
                if raw and (status is None or raw.get("status") == status):
                    runs.append(_run_from_hash(raw))
        return runs[:limit]

    def finish_run(
        self, run_id: str, status: str, *, output: Any = None, error: str | None = None
    ) -> bool:
        """Move a run to a terminal state once, and announce it. False if it already was."""
        fields = {"finished_at": repr(time.time()), "output": _dumps(output)}
        if error is not None:
            fields["error"] = error
        flat = [x for kv in fields.items() for x in kv]
        args = [self.done_channel(run_id), status, *flat]
        return bool(self._finish(keys=[self.run_key(run_id)], args=args))

    @staticmethod
    def _run_fields(record: RunRecord) -> dict[str, str]:
        data = record.model_dump(exclude={"usage"}, exclude_none=True)
        out = {k: (repr(v) if isinstance(v, float) else str(v)) for k, v in data.items()}
        out["input"] = _dumps(record.input)
        out.pop("output", None)
        return out

    # -- steps ---------------------------------------------------------------------------------

    def begin_step(self, run_id: str, record: StepRecord, reads: tuple[str, ...]) -> Begin:
        reply = self._begin(
            keys=[self.run_key(run_id), self.steps_key(run_id), self.outputs_key(run_id)],
            args=[record.path, record.model_dump_json(), repr(time.time()), *reads],
        )
        state = reply[0]
        if state == "done":
            return Begin("done", prior=StepRecord.model_validate_json(reply[2]))
        if state != "go":
            return Begin(state)
        outputs = {k: json.loads(v) for k, v in zip(reads, reply[3:], strict=True) if v}
        return Begin("go", input=json.loads(reply[1]), outputs=outputs)

    def end_step(self, run_id: str, record: StepRecord, publishes: tuple[str, ...]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.steps_key(run_id), record.path, record.model_dump_json())
        if record.ok and publishes:
            value = _dumps(record.output)
            pipe.hset(self.outputs_key(run_id), mapping=dict.fromkeys(publishes, value))
        if record.usage.calls:
            key = self.run_key(run_id)
            pipe.hincrby(key, "prompt_tokens", record.usage.prompt_tokens)
            pipe.hincrby(key, "completion_tokens", record.usage.completion_tokens)
            pipe.hincrby(key, "calls", record.usage.calls)
        pipe.execute()

    def get_step(self, run_id: str, path: str) -> StepRecord | None:
        raw = self.redis.hget(self.steps_key(run_id), path)
        return StepRecord.model_validate_json(raw) if raw else None

    def get_steps_at(self, run_id: str, paths: list[str]) -> list[StepRecord]:
        """The records at `paths`, in order, in one round trip. KeyError if one is missing."""
        raws = self.redis.hmget(self.steps_key(run_id), paths) if paths else []
        missing = [p for p, raw in zip(paths, raws, strict=True) if raw is None]
        if missing:
            raise KeyError(f"no journal record for {missing}")
        return [StepRecord.model_validate_json(raw) for raw in raws]

    def get_steps(self, run_id: str) -> list[StepRecord]:
        raw = self.redis.hgetall(self.steps_key(run_id))
        records = [StepRecord.model_validate_json(v) for v in raw.values()]
        return sorted(records, key=lambda r: (r.started_at or 0, r.path))

    def get_outputs(self, run_id: str) -> dict[str, Any]:
        raw = self.redis.hgetall(self.outputs_key(run_id))
        return {k: json.loads(v) for k, v in raw.items()}

    # -- waiting -------------------------------------------------------------------------------

    def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        """Block until the run is terminal (listening for its event, not polling Celery)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.done_channel(run_id))
        try:
            while True:
                record = self.get_run(run_id)  # after subscribing, so no event is missed
                if record.done:
                    return record
                left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if left <= 0:
                    raise TimeoutError(f"run {run_id} still {record.status} after {timeout}s")
                pubsub.get_message(timeout=left)
        finally:
            pubsub.close()


@lru_cache(maxsize=128)
def _cached_spec(client: Any, prefix: str, digest: str) -> Pipeline:
    # Specs are content-addressed, hence immutable: cache them for the life of the process.
    raw = client.get(f"{prefix}:spec:{digest}")
    if raw is None:
        raise KeyError(f"no pinned spec {digest}")
    return pipeline_from_json(raw)


def _run_from_hash(raw: dict[str, str]) -> RunRecord:
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
        usage=Usage(
            prompt_tokens=int(raw.get("prompt_tokens", 0)),
            completion_tokens=int(raw.get("completion_tokens", 0)),
            calls=int(raw.get("calls", 0)),
        ),
    )

