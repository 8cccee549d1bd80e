"""Producers: the Python client, the public `legato.submit` task, refusals, memoized redelivery."""

from __future__ import annotations

import time

import pytest
import redis

from legato import InputError, Llm, Pipeline, SpecError
from legato.compile import Compiler
from legato.store import RunStore
from legato.workers.app import create_app


def _queued_messages(client: redis.Redis) -> int:
    return sum(client.llen(q) for q in ("legato.control", "legato.llm", "legato.tools"))


def _snapshot(client: redis.Redis) -> tuple[int, int]:
    return client.dbsize(), _queued_messages(client)


@pytest.fixture
def raw_redis(redis_server) -> redis.Redis:
    return redis_server.client()


def test_bad_input_is_refused_and_nothing_is_written_or_enqueued(legato, raw_redis):
    before = _snapshot(raw_redis)
    with pytest.raises(InputError, match=r"input for pipeline 'summarize' refused: text:"):
        legato.submit("summarize", {"text": 42})
    with pytest.raises(InputError, match="text: Field required"):
        legato.submit("summarize", {})
    assert _snapshot(raw_redis) == before


def test_unknown_pipeline_and_bad_spec_are_refused(legato, raw_redis, tmp_path):
    before = _snapshot(raw_redis)
    with pytest.raises(SpecError, match="unknown pipeline .*known: .*summarize"):
        legato.submit("no_such_pipeline", {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - {kind: llm, id: a, model: huge, prompt: hi}\n")
    with pytest.raises(SpecError) as info:
        legato.submit(str(bad), {})
    assert info.value.path == "steps[0].model" and info.value.source == str(bad)
    assert _snapshot(raw_redis) == before


def test_public_submit_task_runs_a_pipeline_from_any_celery_client(legato, stack_env):
    from celery import Celery

    # A bare Celery client: it knows only the broker and the public task name.
    client = Celery(broker=stack_env["LEGATO_REDIS_URL"], backend=stack_env["LEGATO_REDIS_URL"])
    client.conf.update(task_serializer="json", accept_content=["json"],
                       result_serializer="json")
    reply = client.send_task("legato.submit", queue="legato.control", kwargs={
        "pipeline": "summarize", "input": {"text": "Celery clients can enqueue Legato jobs."}})
    run_id = reply.get(timeout=30)["run_id"]
    run = legato.wait(run_id, timeout=30)
    assert run.status == "succeeded" and run.pipeline == "summarize"

    refused = client.send_task("legato.submit", queue="legato.control",
                               kwargs={"pipeline": "summarize", "input": {"txt": "typo"}})
    with pytest.raises(Exception, match="text: Field required"):
        refused.get(timeout=30)


def test_same_idempotency_key_returns_the_same_run(legato, fake):
    first = legato.submit("summarize", {"text": "once only"}, idempotency_key="job-42")
    second = legato.submit("summarize", {"text": "once only"}, idempotency_key="job-42")
    assert first == second
    legato.wait(first, timeout=30)
    assert fake.stats()["by_step"][f"{first}/summary"] == 1


def test_a_redelivered_step_returns_its_journaled_result_without_rerunning(legato, fake):
    run_id = legato.submit("summarize", {"text": "deliver me twice"})
    assert legato.wait(run_id, timeout=30).status == "succeeded"
    before = fake.stats()["by_step"][f"{run_id}/summary"]
    original = {s.path: s for s in legato.steps(run_id)}["summary"]

    # Deliver the first step's message again, as a broker would after a lost ack.
    run = legato.status(run_id)
    sig = Compiler(legato.app, run_id, run.spec_hash).task("legato.llm", "legato.llm", "summary")
    again = sig.apply_async(ignore_result=False).get(timeout=30)

    assert again == {"path": "summary", "status": "succeeded"}  # slim: no model text on the wire
    assert {s.path: s for s in legato.steps(run_id)}["summary"] == original
    assert fake.stats()["by_step"][f"{run_id}/summary"] == before == 1


def test_a_run_is_pinned_to_the_spec_it_started_with(legato, fake, tmp_path):
    path = tmp_path / "pinned.yaml"
    path.write_text("steps:\n  - {kind: llm, id: say, model: small, prompt: 'version one'}\n")
    fake.script({"latency_ms": 300})
    run_id = legato.submit(str(path), {})
    path.write_text("steps:\n  - {kind: llm, id: say, model: small, prompt: 'version two'}\n")
    run = legato.wait(run_id, timeout=30)
    assert run.output == "[fake:smollm2] version one"
    newer = legato.wait(legato.submit(str(path), {}), timeout=30)
    assert newer.output == "[fake:smollm2] version two" and newer.spec_hash != run.spec_hash


def test_runs_lists_newest_first_and_filters_by_status(legato, fake):
    ok = legato.submit(Pipeline(name="listed", steps=[Llm(id="a", model="small", prompt="x")]),
                       {})
    legato.wait(ok, timeout=30)
    time.sleep(0.01)
    bad = legato.submit(Pipeline(name="listed_bad", steps=[
        Llm(id="a", model="small", prompt="{{ input.missing }}")]), {})
    failed = legato.wait(bad, timeout=30)
    assert "template failed" in failed.error and "missing" in failed.error

    newest = legato.runs(limit=2)
    assert [r.id for r in newest] == [bad, ok]
    assert all(r.status == "failed" for r in legato.runs(status="failed", limit=50))
    assert bad in [r.id for r in legato.runs(status="failed", limit=50)]


def test_store_finishes_a_run_once(redis_server):
    store = RunStore.from_url(redis_server.url, prefix="legato-test-once")
    from legato.envelope import RunRecord

    store.create_run(RunRecord(id="r1", pipeline="p", spec_hash="h", status="queued",
                               created_at=time.time()))
    assert store.finish_run("r1", "failed", error="first") is True
    assert store.finish_run("r1", "succeeded", output="late") is False
    run = store.get_run("r1")
    assert run.status == "failed" and run.error == "first"


def test_producer_app_sends_json_only(stack_env):
    app = create_app()
    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"
    assert app.conf.result_accept_content == ["json"]
