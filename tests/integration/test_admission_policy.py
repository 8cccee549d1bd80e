"""Admission's policy on a real Redis, step by step: who is released when a run ends.

No workers here: runs are recorded, admitted and ended by hand (each ended run charged a fixed
number of tokens), so the order of release is exact. The same scripts run under real workers in
test_fair_shares.py.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from legato.admission import Admission
from legato.envelope import RunRecord, StepRecord, Usage
from legato.local.redis_server import RedisServer
from legato.store import RunStore, connect
from legato.tenants import Policies, SpendCap, TenantPolicy
from tests.conftest import charged

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def store(redis_url: str) -> RunStore:
    return RunStore(connect(redis_url), f"adm{next(_prefixes)}")


def _run(store: RunStore, tenant: str, priority: int = 0) -> str:
    record = RunRecord(id=uuid.uuid4().hex, pipeline="p", spec_hash="h", status="queued",
                       created_at=time.time(), tenant=tenant, priority=priority)
    return store.create_run(record)


def _end(store: RunStore, admission: Admission, run_id: str, *, tokens: int = 100,
         cost: float = 0.0) -> list[str]:
    """The run succeeds having used `tokens`; returns the runs that released."""
    store.redis.hset(store.keys.run(run_id), mapping={"prompt_tokens": tokens, "cost": cost})
    assert store.finish_run(run_id, "succeeded")
    return [run for run, _ in admission.settle(run_id)]


def _admit(store: RunStore, admission: Admission, tenant: str, priority: int = 0
           ) -> tuple[str, list[str]]:
    run_id = _run(store, tenant, priority)
    admitted = admission.admit(run_id, tenant, priority)
    assert admitted.capped is None
    return run_id, [run for run, _ in admitted.released]


def test_a_flooding_tenant_waits_behind_a_newcomer(store):
    admission = Admission(store.redis, store.keys, Policies(capacity=2))
    flood = [_admit(store, admission, "a") for _ in range(10)]
    running = [r for _, released in flood for r in released]
    assert running == [flood[0][0], flood[1][0]]  # free slots: released at once
    for _ in range(4):  # A's flood goes on alone for a while, using tokens
        running += _end(store, admission, running.pop(0))
    newcomer = [_admit(store, admission, "b") for _ in range(3)]
    assert all(not released for _, released in newcomer)
    held = store.get_run(newcomer[0][0]).held
    assert held == "waiting for admission: the cluster runs 2 at once, shared by weight"
    order: list[str] = []
    while running:
        released = _end(store, admission, running.pop(0))
        order += released
        running += released
    b_ids = {run_id for run_id, _ in newcomer}
    assert set(order[:3]) == b_ids, "B's runs go first: A has used tokens, B none"
    assert len(order) == 4 + 3
    assert admission.in_flight() == {}
    assert store.redis.hlen(store.keys.adm_count) == 0


def test_releases_follow_the_weights_in_tokens(store):
    policies = Policies(capacity=4, tenants={"a": TenantPolicy(weight=3),
                                             "b": TenantPolicy(weight=1)})
    admission = Admission(store.redis, store.keys, policies)
    running: list[str] = []
    for _ in range(150):
        for tenant in ("a", "b"):
            running += _admit(store, admission, tenant)[1]
    served: Counter[str] = Counter()
    for _ in range(200):  # every run uses the same tokens: shares of runs are shares of tokens
        run_id = running.pop(0)
        served[store.get_run(run_id).tenant] += 100
        running += _end(store, admission, run_id)
    share = served["a"] / (served["a"] + served["b"])
    assert abs(share - 0.75) <= 0.05, served  # weights 3:1, within 5 points


def test_priority_first_within_a_tenant_then_arrival(store):
    admission = Admission(store.redis, store.keys,
                          Policies(tenants={"p": TenantPolicy(max_concurrent_runs=1)}))
    first, _ = _admit(store, admission, "p")
    queued = [_admit(store, admission, "p", priority)[0] for priority in (0, 5, 0, 9, 5)]
    assert store.get_run(queued[0]).held == \
        "waiting for admission: tenant p has 1 of 1 runs in flight"
    order, running = [], first
    for _ in queued:
        (running,) = _end(store, admission, running)
        order.append(running)
    assert order == [queued[3], queued[1], queued[4], queued[0], queued[2]]


def test_a_spend_cap_fails_or_holds_new_runs(store):
    cap = {"day": 1.0}
    policies = Policies(tenants={"f": TenantPolicy(spend_cap=SpendCap(**cap, on_cap="fail")),
                                 "h": TenantPolicy(spend_cap=SpendCap(**cap, on_cap="hold"))})
    admission = Admission(store.redis, store.keys, policies)
    for tenant in ("f", "h"):
        spender, released = _admit(store, admission, tenant)
        assert released == [spender]
        _end(store, admission, spender, cost=1.5)
    refused = _run(store, "f")
    assert admission.admit(refused, "f", 0).capped == \
        "tenant f reached its daily spend cap (1.5000 of 1.0000)"
    held, released = _admit(store, admission, "h")
    assert released == []
    assert store.get_run(held).held == "held: tenant h reached its daily spend cap " \
        "(1.5000 of 1.0000)"
    assert admission.settle() == []  # still capped
    tomorrow = time.time() + 86400
    assert [r for r, _ in admission.settle(now=tomorrow)] == [held]


def test_a_run_cancelled_while_held_is_never_released(store):
    admission = Admission(store.redis, store.keys,
                          Policies(tenants={"c": TenantPolicy(max_concurrent_runs=1)}))
    first, _ = _admit(store, admission, "c")
    cancelled, _ = _admit(store, admission, "c")
    kept, _ = _admit(store, admission, "c")
    assert store.finish_run(cancelled, "cancelled")
    assert admission.settle(cancelled) == []
    assert _end(store, admission, first) == [kept]
    assert store.redis.zcard(store.keys.adm_held("c")) == 0


def test_reconcile_frees_the_slot_of_a_run_ended_without_settling(store):
    admission = Admission(store.redis, store.keys, Policies(capacity=1))
    first, _ = _admit(store, admission, "r")
    second, released = _admit(store, admission, "r")
    assert released == []
    store.finish_run(first, "failed", error="its worker died before settling it")
    assert [r for r, _ in admission.reconcile()] == [second]
    assert admission.reconcile() == []  # repeated: nothing more
    assert int(store.redis.hget(store.keys.run(second), "admissions")) == 1


def _child(store: RunStore, parent: str, path: str, tenant: str, tokens: int) -> str:
    record = RunRecord(id=uuid.uuid4().hex, pipeline="c", spec_hash="h", status="running",
                       created_at=time.time(), tenant=tenant, parent_run=parent,
                       parent_step=path)
    child = store.create_run(record)
    store.add_child(parent, path, child)
    store.redis.hset(store.keys.run(child), "prompt_tokens", tokens)
    return child


def test_a_parents_settle_charges_the_children_that_ended_without_one(store):
    """A child cancelled with its parent ends in the store's finish (no settle of its own), and
    one whose worker died before its settle was never charged: the parent's settle charges
    both, and a grandchild, each once."""
    admission = Admission(store.redis, store.keys, Policies(capacity=2))
    parent, released = _admit(store, admission, "fam")
    assert released == [parent]
    died = _child(store, parent, "a", "fam", tokens=7)  # ended; its settle never ran
    assert store.finish_run(died, "succeeded")
    waiting = _child(store, parent, "b", "fam", tokens=20)  # still running at the parent's end
    grandchild = _child(store, waiting, "inner", "fam", tokens=300)
    assert _end(store, admission, parent, tokens=100) == []
    assert {store.get_run(r).status for r in (waiting, grandchild)} == {"cancelled"}
    assert charged(store, "fam") == (100 + 7 + 20 + 300, 1)  # one run of the tenant's own
    for again in (parent, died, waiting, grandchild):  # late or repeated settles: no double
        admission.settle(again)
    assert charged(store, "fam") == (427, 1)


def test_a_child_still_running_is_charged_by_its_own_settle_not_its_parents(store):
    admission = Admission(store.redis, store.keys, Policies(capacity=2))
    parent, _ = _admit(store, admission, "fam")
    child = _child(store, parent, "a", "fam", tokens=5)
    admission.settle(parent)  # settled by hand while the child still runs
    assert charged(store, "fam") == (0, 1)  # the child's not charged: its usage may still grow
    store.redis.hset(store.keys.run(child), "prompt_tokens", 9)
    assert store.finish_run(child, "succeeded")
    admission.settle(child)
    assert charged(store, "fam") == (9, 1)


def test_a_resumed_run_is_charged_only_for_what_it_used_since_it_ended(store):
    admission = Admission(store.redis, store.keys, Policies(capacity=1))
    run_id, released = _admit(store, admission, "r")
    assert released == [run_id]
    _end(store, admission, run_id, tokens=100, cost=0.5)
    assert charged(store, "r") == (100, 1)
    assert store.reopen_run(run_id, allowed=("succeeded",), status="queued") == "ok"  # resume
    assert [r for r, _ in admission.admit(run_id, "r", 0).released] == [run_id]
    _end(store, admission, run_id, tokens=130, cost=0.75)  # the run's totals: 30 more
    assert charged(store, "r") == (130, 2)
    today = time.strftime("%Y%m%d", time.gmtime())
    assert float(store.redis.get(f"{store.keys.adm_base}spend:r:d:{today}")) == pytest.approx(0.75)


def _late_step(store: RunStore, run_id: str, *, tokens: int, cost: float = 0.0) -> None:
    """A step of `run_id` whose call was in flight when the run ended writes its end."""
    record = StepRecord(path=f"late{uuid.uuid4().hex[:6]}", status="failed", error="cancelled",
                        usage=Usage(prompt_tokens=tokens, calls=1, cost=cost))
    store.journal.end(run_id, record, (), token="t", now=time.time())


def test_usage_a_step_adds_after_its_run_was_settled_is_billed_by_the_sweepers_reconcile(store):
    admission = Admission(store.redis, store.keys, Policies(capacity=1))
    run_id, _ = _admit(store, admission, "late")
    _end(store, admission, run_id, tokens=100, cost=0.5)
    assert charged(store, "late") == (100, 1)
    _late_step(store, run_id, tokens=40, cost=0.25)  # e.g. a call in flight at a cancel
    assert store.redis.zscore(store.keys.adm_unbilled, run_id) is not None
    admission.reconcile()
    admission.reconcile()  # again: nothing more
    assert charged(store, "late") == (140, 1)  # the late tokens, and still one run
    today = time.strftime("%Y%m%d", time.gmtime())
    spend = float(store.redis.get(f"{store.keys.adm_base}spend:late:d:{today}"))
    assert spend == pytest.approx(0.75)
    assert store.redis.zcard(store.keys.adm_unbilled) == 0


def test_a_late_step_of_a_child_is_billed_and_a_resumed_run_keeps_its_slot(store):
    admission = Admission(store.redis, store.keys, Policies(capacity=1))
    parent, _ = _admit(store, admission, "fam")
    child = _child(store, parent, "a", "fam", tokens=5)
    _end(store, admission, parent, tokens=10)  # the child is cancelled with it, and charged
    assert charged(store, "fam") == (15, 1)
    _late_step(store, child, tokens=3)
    admission.reconcile()
    assert charged(store, "fam") == (18, 1)
    # a resumed run was billed when it ended: its steps' ends mark it, but while it runs the
    # sweeper leaves its slot and its bill to its own settle
    assert store.reopen_run(parent, allowed=("succeeded",), status="queued") == "ok"
    assert [r for r, _ in admission.admit(parent, "fam", 0).released] == [parent]
    _late_step(store, parent, tokens=7)
    admission.reconcile()
    assert admission.in_flight() == {parent: "fam"} and charged(store, "fam") == (18, 1)
    assert store.finish_run(parent, "succeeded")
    admission.settle(parent)
    assert charged(store, "fam") == (25, 2)
    assert store.redis.zcard(store.keys.adm_unbilled) == 0
