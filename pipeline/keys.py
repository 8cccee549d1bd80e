"""Every Redis key Legato uses, in one place.

    <p>:spec:<hash>            pinned pipeline JSON, written once per content hash
    <p>:run:{<id>}             hash: the run record
    <p>:run:{<id>}:steps       hash: step path -> StepRecord JSON (the journal)
    <p>:run:{<id>}:outputs     hash: step id -> output JSON (what templates read)
    <p>:runs                   sorted set: run ids by creation time
    <p>:active                 sorted set: unfinished run ids by their last sign of life
    <p>:idem:<key>             idempotency key -> run id
    <p>:leases                 sorted set: "<run>|<path>" of steps being worked on, by lease expiry
    <p>:lease:owner            hash: "<run>|<path>" -> token of the delivery holding the lease
    <p>:lease:sig              hash: "<run>|<path>" -> the task's signature, to dispatch it again
                               (a batch member's: "@<task id>", the field holding its batch's)
    <p>:done:<id>              pub/sub channel: the run reached a terminal state
    <p>:consumers:<queue>      sorted set: workers consuming the queue, by advertisement expiry
    <p>:waiting                sorted set: runs waiting for a worker on an unserved queue
    <p>:children:ended         sorted set: "<run>|<path>" of `pipeline` steps whose child run
                               ended, until the step is told (by when the child ended)
    <p>:dead                   list: the newest poison messages set aside, as JSON
    <p>:poisoned               hash: poison messages set aside, by reason (and `total`)
    <p>:run:{<id>}:attempts    hash: step path -> attempts begun
    <p>:run:{<id>}:vote:<node>:votes|reached    quorum tallies (voting.py)
    <p>:run:{<id>}:children    hash: a `pipeline` step's path -> the child run it started
    <p>:run:{<id>}:mcp         hash: MCP server -> its tool list, pinned by the run's first use
    <p>:run:{<id>}:toolcalls   hash: idempotency key -> a journaled tool call's result (MCP)
    <p>:run:{<id>}:events      stream: the run's events (step lifecycle, model tokens; events.py)
    <p>:run:{<id>}:watched     a watcher follows the run's events (expires unless renewed)
    <p>:run:{<id>}:keys        set: the run's keys not named above (its votes', MCP's), for
                               retention
    <p>:run:{<id>}:signals     hash: step path -> the signal that arrived for it (JSON), kept once
    <p>:run:{<id>}:parked      hash: step path -> what a parked step waits for, since, deadline
    <p>:park:sig               hash: "<run>|<path>" -> a parked step's signature, to resume it
    <p>:park:deadlines         sorted set: "<run>|<path>" of parked steps with a timeout, by it
    <p>:park:resuming          sorted set: "<run>|<path>" signalled, re-send not yet confirmed
    <p>:callbacks              sorted set: finished runs whose callbacks are being delivered, by
                               when their holder's time is up (then a sweeper sends them again)
    <p>:schedule:<name>        hash: a schedule's state (last run, ticks fired and skipped)
    <p>:schedule:<name>:tick:<t>   a tick claimed by one beat (SET NX, expires)

The model layer's shared state (pipeline/models/):

    <p>:breaker:<provider>     hash: a provider's circuit (failures, opened_at); `...:probe` a lock
    <p>:ratelimit:<alias>:requests|tokens       token buckets of an alias's rate limits
    <p>:budget:<id>            hash: a run's budget spent (calls, tokens, cost, started)
    <p>:cache:<digest>         a recorded model response (JSON)

Admission and fair shares (pipeline/admission.py; the scripts build the per-tenant names):

    <p>:adm:policy             hash: the tenants file, flat (`capacity`, `<tenant>|weight`, ...)
    <p>:adm:running            hash: admitted runs in flight -> tenant
    <p>:adm:count              hash: tenant -> its runs in flight
    <p>:adm:tenants            set: tenants with held runs
    <p>:adm:seq                counter: arrival order of held runs
    <p>:adm:held:<tenant>      sorted set: a tenant's held runs, by priority then arrival
    <p>:adm:used:<tenant>      hash: tokens and runs ended, per tenth of the sliding window
    <p>:adm:unbilled           sorted set: billed runs that a late step end added usage to
                               (e.g. cancelled mid-call) -> when; the sweeper bills them
    <p>:adm:spend:<tenant>:d:<yyyymmdd>|m:<yyyymm>   spend (from price tables) per day, month
    <p>:conc:<key>             sorted set: "<run>|<path>" holding a concurrency key's slots
    <p>:ratelimit:<alias>@<tenant>:requests|tokens  a tenant's own buckets on an alias
Evals (pipeline/evals/):

    <p>:eval:<id>:runs         set: the run ids an eval submitted (its arms' runs and judges')
    <p>:evals                  sorted set: eval ids by when they started

Lua scripts touch a run's keys and the global lease keys together, so Legato wants one Redis
(a primary, with replicas if you like), not Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "legato"

    def spec(self, digest: str) -> str:
        return f"{self.prefix}:spec:{digest}"

    def run(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}"

    def steps(self, run_id: str) -> str:
        return f"{self.run(run_id)}:steps"

    def outputs(self, run_id: str) -> str:
        return f"{self.run(run_id)}:outputs"

    def idem(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    def done(self, run_id: str) -> str:
        return f"{self.prefix}:done:{run_id}"

    def attempts(self, run_id: str) -> str:
        return f"{self.run(run_id)}:attempts"

    def events(self, run_id: str) -> str:
        """stream: the run's events, model tokens among them (legato.events)"""
        return f"{self.run(run_id)}:events"

    def watched(self, run_id: str) -> str:
        """string: set while someone follows the run's events (legato.events.watching)"""
        return f"{self.run(run_id)}:watched"

    def run_extras(self, run_id: str) -> str:
        """set: the run's keys whose names are not fixed (its votes'), so they expire with it"""
        return f"{self.run(run_id)}:keys"

    def children(self, run_id: str) -> str:
        """hash: a `pipeline` step's path -> the id of the child run it started"""
        return f"{self.run(run_id)}:children"

    def signals(self, run_id: str) -> str:
        """hash: step path -> the signal stored for it (pipeline/waits.py)"""
        return f"{self.run(run_id)}:signals"

    def parked(self, run_id: str) -> str:
        """hash: step path -> what the parked step waits for (JSON: for, since, deadline)"""
        return f"{self.run(run_id)}:parked"

    def of_run(self, run_id: str) -> list[str]:
        """Every key a run owns by a fixed name: the run hash first; its children, its event
        stream and its extras set (which lists the rest) last, in that order (store.py's finish
        script reads the children and writes `run_finished` to the stream by those places)."""
        return [self.run(run_id), self.steps(run_id), self.outputs(run_id),
                self.attempts(run_id), self.budget(run_id), self.signals(run_id),
                self.parked(run_id), self.children(run_id), self.events(run_id),
                self.run_extras(run_id)]

    def mcp_tools(self, run_id: str) -> str:
        return f"{self.run(run_id)}:mcp"

    def tool_calls(self, run_id: str) -> str:
        return f"{self.run(run_id)}:toolcalls"

    def votes(self, run_id: str, node: str) -> str:
        return f"{self.run(run_id)}:vote:{node}:votes"

    def vote_reached(self, run_id: str, node: str) -> str:
        return f"{self.run(run_id)}:vote:{node}:reached"

    # -- the model layer's ---------------------------------------------------------------------

    def breaker(self, provider: str) -> str:
        return f"{self.prefix}:breaker:{provider}"

    def breaker_probe(self, provider: str) -> str:
        return f"{self.breaker(provider)}:probe"

    def ratelimit(self, alias: str) -> list[str]:
        """An alias's request bucket and token bucket, in that order."""
        base = f"{self.prefix}:ratelimit:{alias}"
        return [f"{base}:requests", f"{base}:tokens"]

    def budget(self, run_id: str) -> str:
        return f"{self.prefix}:budget:{run_id}"

    def cache(self, digest: str) -> str:
        return f"{self.prefix}:cache:{digest}"

    # -- admission and fair shares (legato.admission, legato.concurrency) -----------------------

    @property
    def run_prefix(self) -> str:
        """What a run's key is this plus `{<id>}` (for scripts that name runs they find)."""
        return f"{self.prefix}:run:"

    @property
    def adm_base(self) -> str:
        return f"{self.prefix}:adm:"

    @property
    def adm_policy(self) -> str:
        return f"{self.adm_base}policy"

    @property
    def adm_running(self) -> str:
        return f"{self.adm_base}running"

    @property
    def adm_count(self) -> str:
        return f"{self.adm_base}count"

    @property
    def adm_tenants(self) -> str:
        return f"{self.adm_base}tenants"

    @property
    def adm_seq(self) -> str:
        return f"{self.adm_base}seq"

    def adm_held(self, tenant: str) -> str:
        return f"{self.adm_base}held:{tenant}"

    @property
    def adm_unbilled(self) -> str:
        return f"{self.adm_base}unbilled"

    def adm_used(self, tenant: str) -> str:
        return f"{self.adm_base}used:{tenant}"

    def concurrency(self, key: str) -> str:
        return f"{self.prefix}:conc:{key}"

    @property
    def callbacks(self) -> str:
        """sorted set: finished runs whose callbacks are due, by when a sweeper may send them"""
        return f"{self.prefix}:callbacks"

    def schedule(self, name: str) -> str:
        """hash: a schedule's state (schedules.py)"""
        return f"{self.prefix}:schedule:{name}"

    def schedule_tick(self, name: str, tick: str) -> str:
        """a schedule's tick, claimed by the one beat that fires it"""
        return f"{self.schedule(name)}:tick:{tick}"
    def eval_runs(self, eval_id: str) -> str:
        return f"{self.prefix}:eval:{eval_id}:runs"

    @property
    def evals(self) -> str:
        return f"{self.prefix}:evals"

    @property
    def runs(self) -> str:
        return f"{self.prefix}:runs"

    @property
    def active(self) -> str:
        return f"{self.prefix}:active"

    def consumers(self, queue: str) -> str:
        """sorted set: the workers consuming `queue`, by when their advertisement expires"""
        return f"{self.prefix}:consumers:{queue}"

    @property
    def waiting(self) -> str:
        """sorted set: runs with a step sent to a queue no live worker serves, by since when"""
        return f"{self.prefix}:waiting"

    @property
    def ended_children(self) -> str:
        """sorted set: "<run>|<path>" of `pipeline` steps whose child ended, not yet told"""
        return f"{self.prefix}:children:ended"

    @property
    def dead(self) -> str:
        """list: the newest poison messages set aside (workers/poison.py), as JSON"""
        return f"{self.prefix}:dead"

    @property
    def poisoned(self) -> str:
        """hash: poison messages set aside, counted by reason (and `total`)"""
        return f"{self.prefix}:poisoned"

    @property
    def leases(self) -> str:
        return f"{self.prefix}:leases"

    @property
    def lease_owner(self) -> str:
        return f"{self.prefix}:lease:owner"

    @property
    def lease_sig(self) -> str:
        return f"{self.prefix}:lease:sig"

    @property
    def park_sig(self) -> str:
        """hash: "<run>|<path>" -> the parked step's own signature (its continuation)"""
        return f"{self.prefix}:park:sig"

    @property
    def park_deadlines(self) -> str:
        return f"{self.prefix}:park:deadlines"

    @property
    def park_resuming(self) -> str:
        """sorted set: parked steps signalled whose re-send is not yet confirmed, by when"""
        return f"{self.prefix}:park:resuming"


def lease_member(run_id: str, path: str) -> str:
    return f"{run_id}|{path}"


def split_member(member: str) -> tuple[str, str]:
    run_id, _, path = member.partition("|")
    return run_id, path
