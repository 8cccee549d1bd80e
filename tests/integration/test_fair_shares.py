"""Fair shares end to end: tenants, priorities, limits, spend caps and concurrency keys, under
real workers with a tenants file, on a Redis of their own (so the session's workers, which have
none, never take these runs). The fake model counts the calls in flight. The pipelines directory
is the child pipelines' (tests/data/children/), for the `pipeline` steps here."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from legato import Legato, Llm, Pipeline, PipelineStep
from legato.compile import DEFAULT_QUEUES
from legato.fields import Concurrency
from legato.local import processes
from legato.local.redis_server import RedisServer
from legato.models.config import ModelConfig, Prices
from legato.settings import Settings
from tests.conftest import FAST_RECOVERY, ROOT, FakeModel, charged, environ

POLICY = """
capacity: 8
window_seconds: 30
tenants:
  solo: {max_concurrent_runs: 1}
  pair: {max_concurrent_runs: 2, limits: {small: {rpm: 60}}}
  capfail: {spend_cap: {day: 0.3, on_cap: fail}}
  caphold: {spend_cap: {day: 0.3, on_cap: hold}}
"""


class Stack:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.live, self.started = env, logs, [], 0

    def add(self, *, wait: bool = True) -> processes.Service:
        self.started += 1
        service = processes.worker(f"fair{self.started}", list(DEFAULT_QUEUES), env=self.env,
                                   concurrency=16, log_dir=self.logs)
        self.live.append(service.start(timeout=60, wait=wait))
        return service


@pytest.fixture(scope="module")
def stack(fake_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("fair")
    policy = logs / "tenants.yaml"
    policy.write_text(POLICY)
    with RedisServer() as redis_server:
        env = {**FAST_RECOVERY, "LEGATO_STALL_SECONDS": "10", "LEGATO_MAX_RECOVERIES": "5",
               "LEGATO_REDIS_URL": redis_server.url, "LEGATO_MODEL_BASE_URL": fake_model,
               "LEGATO_PIPELINES_DIR": str(ROOT / "tests" / "data" / "children"),
               "LEGATO_MODELS_FILE": str(ROOT / "pipelines" / "models.yaml"),
               "LEGATO_HTTP_TIMEOUT": "10",
               "LEGATO_TENANTS_FILE": str(policy), "PYTHONPATH": str(ROOT)}
        stack = Stack(env, logs)
        with environ(env):
            try:
                stack.add()
                stack.add()
                yield stack
            finally:
                for service in stack.live:
                    service.stop()


@pytest.fixture
def legato(stack: Stack) -> Legato:
    return Legato(Settings.from_env())


ONE_CALL = Pipeline(name="fair", steps=[Llm(id="a", model="small", prompt="{{ input.text }}")])


def _slow(fake: FakeModel, ms: int, contains: str = "") -> None:
    fault = {"kind": "latency", "ms": ms, **({"match": {"contains": contains}} if contains
                                             else {})}
    fake.script({"faults": [fault]})


def _charged_soon(legato: Legato, tenant: str, want: tuple[int, int],
                  timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while charged(legato.store, tenant) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return charged(legato.store, tenant) == want


def _wait_all(legato: Legato, run_ids: list[str], timeout: float = 120) -> list:
    return [legato.wait(run_id, timeout=timeout) for run_id in run_ids]


def test_tenant_and_priority_are_stored_shown_and_filtered(legato, fake):
    run_id = legato.submit(ONE_CALL, {"text": "hi"}, tenant="acme", priority=7)
    record = legato.wait(run_id, timeout=60)
    assert (record.status, record.tenant, record.priority) == ("succeeded", "acme", 7)
    assert [r.id for r in legato.runs(tenant="acme")] == [run_id]
    assert run_id not in [r.id for r in legato.runs(tenant="default")]


def test_bad_tenant_or_priority_is_refused_and_nothing_is_written(legato):
    before = legato.store.redis.zcard(legato.store.keys.runs)
    with pytest.raises(Exception, match="tenant 'no spaces' refused"):
        legato.submit(ONE_CALL, {"text": "x"}, tenant="no spaces")
    with pytest.raises(Exception, match="priority 5000 refused"):
        legato.submit(ONE_CALL, {"text": "x"}, priority=5000)
    assert legato.store.redis.zcard(legato.store.keys.runs) == before


def test_priorities_hold_within_a_tenant(legato, fake):
    _slow(fake, 1500, contains="blocker")
    blocker = legato.submit(ONE_CALL, {"text": "blocker"}, tenant="solo")
    runs = [(p, legato.submit(ONE_CALL, {"text": f"p{p} {i}"}, tenant="solo", priority=p))
            for i, p in enumerate([0, 3, 0, 3, 9])]
    held = legato.status(runs[0][1])
    assert held.status == "queued"
    assert held.held == "waiting for admission: tenant solo has 1 of 1 runs in flight"
    records = _wait_all(legato, [blocker, *[r for _, r in runs]])
    assert all(r.status == "succeeded" for r in records), [r.error for r in records]
    started = sorted(records[1:], key=lambda r: r.admitted_at)
    assert [r.priority for r in started] == [9, 3, 3, 0, 0]


def test_a_resumed_run_waits_for_its_tenants_turn(legato, fake):
    _slow(fake, 1500, contains="blocker")
    blocker = legato.submit(ONE_CALL, {"text": "blocker"}, tenant="solo")
    later = legato.submit(ONE_CALL, {"text": "later"}, tenant="solo")
    assert legato.status(later).held  # behind the blocker
    assert legato.cancel(later)
    assert legato.status(later).held is None  # it waits no more
    legato.resume(later)  # while the blocker still holds solo's one slot
    resumed = legato.status(later)
    assert resumed.status == "queued", resumed
    assert resumed.held == "waiting for admission: tenant solo has 1 of 1 runs in flight"
    first, second = _wait_all(legato, [blocker, later])
    assert (first.status, second.status) == ("succeeded", "succeeded"), second.error
    assert second.admitted_at >= first.finished_at  # ran after it, not beside it


def test_limits_delay_work_and_never_drop_it(legato, fake):
    _slow(fake, 150)
    run_ids = [legato.submit(ONE_CALL, {"text": f"pair {i}"}, tenant="pair") for i in range(8)]
    records = _wait_all(legato, run_ids)
    assert [r.status for r in records] == ["succeeded"] * 8, [r.error for r in records]
    assert fake.stats()["max_in_flight"] == 2  # its max_concurrent_runs, reached, not passed
    calls = [c for r in records for s in legato.steps(r.id) for c in s.model_calls]
    assert any(c.rate_limited for c in calls), "60 rpm: a burst of 6, then calls wait"


def test_a_spend_cap_fails_or_holds_new_runs(legato, fake, fake_model):
    prices = Prices(input_per_mtok=100_000.0, output_per_mtok=100_000.0)  # 10 cents a token
    PRICED = Pipeline(name="priced", models={"priced": ModelConfig(
        base_url=fake_model, model="fake", prices=prices)},
        steps=[Llm(id="a", model="priced", prompt="{{ input.text }}")])
    spender = legato.wait(legato.submit(PRICED, {"text": "spend"}, tenant="capfail"), 60)
    assert spender.status == "succeeded" and spender.usage.cost > 0.3, spender
    # its spend is charged at its settle, which follows its end: waited for
    assert _charged_soon(legato, "capfail", (spender.usage.total_tokens, 1))
    refused = legato.wait(legato.submit(PRICED, {"text": "more"}, tenant="capfail"), 10)
    assert refused.status == "failed"
    assert refused.error.startswith("spend cap reached: tenant capfail reached its daily "
                                    "spend cap"), refused.error
    spent = legato.wait(legato.submit(PRICED, {"text": "spend"}, tenant="caphold"), 60)
    assert _charged_soon(legato, "caphold", (spent.usage.total_tokens, 1))
    held_id = legato.submit(PRICED, {"text": "later"}, tenant="caphold")
    held = legato.status(held_id)
    assert held.status == "queued" and held.held.startswith(
        "held: tenant caphold reached its daily spend cap"), held
    store = legato.store
    for key in store.redis.scan_iter(f"{store.keys.adm_base}spend:caphold:*"):
        store.redis.delete(key)  # as a new day would: the sweeper releases it
    assert legato.wait(held_id, timeout=30).status == "succeeded"


def test_a_child_run_is_its_parents_tenants_and_charged_to_it(legato, fake):
    parent = Pipeline(name="fair_parent", steps=[
        PipelineStep(id="kid", pipeline="child_echo", input={"text": "{{ input.text }}"})])
    run_id = legato.submit(parent, {"text": "family"}, tenant="family", priority=5)
    record = legato.wait(run_id, timeout=60)
    assert record.status == "succeeded", record.error
    (child_id,) = legato.store.children(run_id).values()
    child = legato.status(child_id)
    assert (child.status, child.tenant, child.priority) == ("succeeded", "family", 5)
    # the parent was admitted and holds the slot; the child is not held for one
    assert record.admitted_at is not None and child.admitted_at is None
    assert child.usage.total_tokens > 0 and record.usage.total_tokens == 0
    # the child's tokens are the tenant's, once; the family is one run of the tenant's (each
    # run's settle follows its end, so it is waited for)
    assert _charged_soon(legato, "family", (child.usage.total_tokens, 1))
    assert {r.id for r in legato.runs(tenant="family")} == {run_id, child_id}
    assert child_id not in {r.id for r in legato.runs(tenant="default")}


def test_tokens_of_a_call_in_flight_at_a_cancel_are_charged_when_it_ends(legato, fake):
    _slow(fake, 1500, contains="in flight")
    run_id = legato.submit(ONE_CALL, {"text": "in flight"}, tenant="late")
    deadline = time.monotonic() + 20
    while fake.stats()["in_flight"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert legato.cancel(run_id)
    assert charged(legato.store, "late") == (0, 1)  # settled at the cancel: nothing used yet
    while legato.status(run_id).usage.total_tokens == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # the call answers; its step's end adds its tokens to the run
    used = legato.status(run_id).usage.total_tokens
    assert used > 0
    assert _charged_soon(legato, "late", (used, 1))  # by the sweeper's next pass


def test_a_concurrency_key_caps_steps_across_the_cluster(legato, fake):
    _slow(fake, 200)
    keyed = Pipeline(name="keyed", steps=[Llm(
        id="crm", model="small", prompt="{{ input.text }}",
        concurrency=Concurrency(key="crm-{{ input.customer }}", limit=2))])
    run_ids = [legato.submit(keyed, {"customer": "acme", "text": f"c {i}"}, tenant=f"t{i}")
               for i in range(10)]
    records = _wait_all(legato, run_ids)
    assert [r.status for r in records] == ["succeeded"] * 10, [r.error for r in records]
    assert fake.stats()["max_in_flight"] == 2  # ten admitted runs, two calls at a time
    # a step sent back to wait for its slot made no attempt: each ran once, as attempt 1
    assert [[s.attempt for s in legato.steps(r)] for r in run_ids] == [[1]] * 10


def test_a_worker_killed_mid_flood_loses_and_doubles_nothing(legato, fake, stack):
    _slow(fake, 100)
    flood = [legato.submit(ONE_CALL, {"text": f"a {i}"}, tenant="a") for i in range(120)]
    small = [legato.submit(ONE_CALL, {"text": f"b {i}"}, tenant="b") for i in range(10)]
    time.sleep(random.uniform(0.5, 1.0))
    stack.live.pop(0).signal(9)
    stack.add(wait=False)
    records = _wait_all(legato, flood + small, timeout=180)
    assert [r.status for r in records] == ["succeeded"] * 130, \
        [r.error for r in records if r.status != "succeeded"][:3]
    raw = legato.store.redis
    assert {int(raw.hget(legato.store.keys.run(r.id), "admissions")) for r in records} == {1}
    calls = fake.stats()["by_step_ok"]
    for r in records:
        again = int(raw.hget(legato.store.keys.run(r.id), "redispatches") or 0) + \
            int(raw.hget(legato.store.keys.run(r.id), "recoveries") or 0)
        assert calls.get(f"{r.id}/a", 0) <= 1 + again, r.id  # a call again only if its worker died
    adm = legato.store.keys
    assert raw.hlen(adm.adm_running) == 0 and raw.hlen(adm.adm_count) == 0
    assert raw.zcard(adm.adm_held("a")) == 0 and raw.zcard(adm.adm_held("b")) == 0
