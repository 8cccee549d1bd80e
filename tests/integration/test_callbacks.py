"""Completion callbacks end to end: a real worker with a webhook secret, a private Redis, the fake
model, and a webhook receiver in this process that checks every signature and can fail the
first deliveries it gets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from legato import InputError, Llm, OnDone, Pipeline, RunRecord
from legato.callbacks import verify_signature
from legato.client import Legato
from legato.compile import DEFAULT_QUEUES
from legato.local import processes
from legato.local.redis_server import RedisServer
from legato.settings import Settings
from legato.store import RunStore
from tests.conftest import FAST_RECOVERY, ROOT, eventually
from tests.tools import OUTCOMES_KEY

SECRET = f"whsec-{uuid.uuid4().hex}"
CALLBACK_QUEUE = "tests.callbacks"
ATTEMPTS = 4
TEXT = {"text": "Callbacks tell the world how a run ended, at least once."}


class Receiver:
    """A webhook receiver on a free local port. Each path keeps what it was sent (headers, body,
    whether the signature verified, what was answered) and answers its first `fail_first`
    POSTs with `status`, the rest with 200."""

    def __init__(self) -> None:
        self.got: dict[str, list[dict[str, Any]]] = {}
        self.plans: dict[str, tuple[int, int]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                payload = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                verified = verify_signature(SECRET.encode(), payload,
                                            self.headers.get("X-Legato-Timestamp", ""),
                                            self.headers.get("X-Legato-Signature", ""))
                with receiver.lock:
                    seen = receiver.got.setdefault(self.path, [])
                    fail_first, status = receiver.plans.get(self.path, (0, 500))
                    answer = status if len(seen) < fail_first else 200
                    seen.append({"headers": dict(self.headers), "body": payload,
                                 "verified": verified, "answered": answer})
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def expect(self, *, fail_first: int = 0, status: int = 500) -> str:
        """A new URL whose first `fail_first` POSTs are answered `status`."""
        path = f"/hook/{uuid.uuid4().hex}"
        self.plans[path] = (fail_first, status)
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def deliveries(self, url: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.got.get("/" + url.split("/", 3)[3], []))


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()


@pytest.fixture(scope="module")
def private_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:  # its own broker too: only this module's worker has the secret
        yield server


@pytest.fixture(scope="module")
def env(stack_env: dict[str, str], private_redis: RedisServer) -> dict[str, str]:
    return {**stack_env, **FAST_RECOVERY, "LEGATO_REDIS_URL": private_redis.url,
            "LEGATO_WEBHOOK_SECRET": SECRET, "LEGATO_WEBHOOK_HOSTS": "http://127.0.0.1:*",
            "LEGATO_CALLBACK_RETRY_SECONDS": "0.2", "LEGATO_CALLBACK_ATTEMPTS": str(ATTEMPTS)}


@pytest.fixture(scope="module")
def producer(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Legato]:
    worker = processes.worker("callbacks", [*DEFAULT_QUEUES, CALLBACK_QUEUE], env=env,
                              log_dir=tmp_path_factory.mktemp("callbacks"))
    with worker:
        # This process's settings hold no secret: a producer never needs it.
        yield Legato(Settings(redis_url=env["LEGATO_REDIS_URL"],
                              pipelines_dir=ROOT / "pipelines",
                              webhook_hosts=("http://127.0.0.1:*",)))


def told(legato: Legato, run_id: str) -> RunRecord:
    """The run once its callbacks are all delivered or given up (it left the callbacks set)."""
    def settled() -> RunRecord | None:
        run = legato.status(run_id)
        waiting = legato.store.redis.zscore(legato.store.keys.callbacks, run_id)
        return run if run.done and run.deliveries and waiting is None else None

    return eventually(settled)


def outcomes(legato: Legato, run_id: str) -> list[dict[str, Any]]:
    every = [json.loads(raw) for raw in legato.store.redis.lrange(OUTCOMES_KEY, 0, -1)]
    return [o for o in every if o["run_id"] == run_id]


def test_a_task_callback_is_sent_the_outcome_once(producer, fake):
    run_id = producer.submit("summarize", TEXT, on_done={"task": "tests.record_outcome",
                                                         "queue": CALLBACK_QUEUE})
    run = producer.wait(run_id, timeout=60)
    assert run.status == "succeeded"
    (outcome,) = eventually(lambda: outcomes(producer, run_id))
    assert outcome["status"] == "succeeded" and outcome["output"] == run.output
    assert outcome["pipeline"] == "summarize" and outcome["delivery_id"] == f"{run_id}.0.task"
    assert outcome["seconds"] > 0 and outcome["usage"]["calls"] == run.usage.calls
    record = told(producer, run_id)
    (tried,) = record.deliveries
    assert (tried.target, tried.ok, tried.final) == ("task", True, True)
    # Sent once: one try recorded, nobody left to send it again, its queue drained.
    assert producer.store.redis.llen(CALLBACK_QUEUE) == 0
    assert len(outcomes(producer, run_id)) == 1


def test_a_webhook_is_signed_retried_under_one_delivery_id_and_its_tries_recorded(
        producer, receiver, fake, env):
    url = receiver.expect(fail_first=2)
    run_id = producer.submit("summarize", TEXT, on_done={
        "url": url, "task": "tests.record_outcome", "queue": CALLBACK_QUEUE})
    run = producer.wait(run_id, timeout=60)
    got = eventually(lambda: len(receiver.deliveries(url)) >= 3 and receiver.deliveries(url))
    assert [g["answered"] for g in got] == [500, 500, 200]
    assert all(g["verified"] for g in got), "every try is signed with the worker's secret"
    assert {g["headers"]["X-Legato-Delivery"] for g in got} == {f"{run_id}.0.webhook"}
    assert {g["headers"]["Idempotency-Key"] for g in got} == {f"{run_id}.0.webhook"}
    body = json.loads(got[-1]["body"])
    assert (body["run_id"], body["status"], body["output"]) == (run_id, "succeeded", run.output)

    record = told(producer, run_id)
    tries = [(d.status, d.ok, d.final) for d in record.deliveries if d.target == "webhook"]
    assert tries == [(500, False, False), (500, False, False), (200, True, True)]
    assert [d.ok for d in record.deliveries if d.target == "task"] == [True]
    assert len(outcomes(producer, run_id)) == 1
    shown = subprocess.run([sys.executable, "-m", "legato.cli", "status", run_id],
                           env={**os.environ, **env, "COLUMNS": "200"}, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"POST {url}  delivered" in shown.stdout and shown.stdout.count("HTTP 500") == 2


def test_a_webhook_refused_for_good_is_tried_once_and_a_failing_one_given_up(
        producer, receiver, fake):
    gone, down = receiver.expect(fail_first=99, status=404), receiver.expect(fail_first=99)
    refused = producer.submit("summarize", TEXT, on_done={"url": gone})
    failing = producer.submit("summarize", TEXT, on_done={"url": down})
    tries = told(producer, refused).deliveries
    assert [(d.status, d.ok, d.final) for d in tries] == [(404, False, True)]
    tries = told(producer, failing).deliveries
    assert [d.status for d in tries] == [500] * ATTEMPTS and tries[-1].final
    assert f"gave up after {ATTEMPTS} tries" in str(tries[-1].error)
    assert len(receiver.deliveries(gone)) == 1 and len(receiver.deliveries(down)) == ATTEMPTS


def test_a_run_finished_by_a_process_that_died_before_sending_is_told_by_a_sweeper(
        producer, receiver):
    url = receiver.expect()
    # What a finisher killed right after the finishing script leaves: the run finished, its
    # callbacks due, legato.deliver never sent. A worker's sweeper sends it once the hold is up.
    store = RunStore(producer.store.redis, producer.store.prefix, callback_hold=1.0)
    run_id = uuid.uuid4().hex
    store.create_run(RunRecord(id=run_id, pipeline="summarize", spec_hash="-", status="running",
                               input=TEXT, created_at=time.time(), on_done=OnDone(url=url)))
    assert store.end_run(run_id, "cancelled", error="by the test")
    (got,) = eventually(lambda: receiver.deliveries(url))
    assert got["verified"] and json.loads(got["body"])["status"] == "cancelled"
    assert [d.ok for d in told(producer, run_id).deliveries] == [True]


def test_a_cancelled_run_tells_at_once_and_a_resumed_one_tells_anew(producer, receiver):
    url = receiver.expect()
    stuck = Pipeline(name="stuck", steps=[Llm(id="a", model="small", prompt="never answered",
                                              queue="tests.nobody")])
    run_id = producer.submit(stuck, {}, on_done={"url": url})
    assert producer.cancel(run_id, "not needed")  # the canceller sends legato.deliver itself
    (first,) = eventually(lambda: receiver.deliveries(url))
    told(producer, run_id)
    producer.resume(run_id)
    assert producer.status(run_id).deliveries == []  # they told the outcome it no longer has
    producer.cancel(run_id, "still not needed")
    got = eventually(lambda: len(receiver.deliveries(url)) == 2 and receiver.deliveries(url))
    ids = [g["headers"]["X-Legato-Delivery"] for g in got]
    assert ids == [f"{run_id}.0.webhook", f"{run_id}.1.webhook"]
    assert [json.loads(g["body"])["error"] for g in got] == ["not needed", "still not needed"]
    assert [d.delivery_id for d in told(producer, run_id).deliveries] == [ids[1]]


def _snapshot(client: redis.Redis) -> tuple[int, dict[str, int]]:
    queues = [*DEFAULT_QUEUES, CALLBACK_QUEUE]
    return client.dbsize(), {q: client.llen(q) for q in queues}


def test_bad_callbacks_are_refused_at_submit_and_nothing_is_written(producer, private_redis,
                                                                     env):
    client = private_redis.client()
    before = _snapshot(client)
    for on_done, reason in [
            ({"url": "http://example.com/hook"}, "not in LEGATO_WEBHOOK_HOSTS"),
            ({"url": "ftp://127.0.0.1/hook"}, r"only http\(s\) URLs"),
            ({"task": "not a task name"}, "on_done.task: a task name is"),
            ({"task": "legato.submit"}, "one of Legato's own tasks")]:
        with pytest.raises(InputError, match=reason):
            producer.submit("summarize", TEXT, on_done=on_done)
    # Over the wire, legato.submit checks against the worker's own list.
    reply = producer.app.send_task("legato.submit", queue="legato.control", kwargs={
        "pipeline": "summarize", "input": TEXT, "on_done": {"url": "https://example.com/x"}})
    with pytest.raises(Exception, match="on_done.url: refused URL .*LEGATO_WEBHOOK_HOSTS"):
        reply.get(timeout=60)
    reply.forget()
    cli = subprocess.run([sys.executable, "-m", "legato.cli", "submit", "summarize",
                          "--input", json.dumps(TEXT), "--on-done-url", "http://10.0.0.1/x"],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and "on_done.url: refused URL" in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1
    assert _snapshot(client) == before


def test_the_webhook_secret_is_never_in_redis(producer, private_redis):
    # Run last in the module: every run above, its messages, results and records are there.
    client = private_redis.client()
    assert client.dbsize() > 0
    readers = {"string": lambda k: [client.get(k)], "hash": lambda k: client.hgetall(k).items(),
               "list": lambda k: client.lrange(k, 0, -1), "set": client.smembers,
               "zset": lambda k: client.zrange(k, 0, -1),
               "stream": lambda k: [str(m) for m in client.xrange(k)]}
    for key in client.scan_iter(count=1000):
        text = repr((key, list(readers[client.type(key).decode()](key))))
        assert SECRET not in text and SECRET.encode().hex() not in text, key


