"""Security, against real parts: pickle refused by workers, API keys never stored in Redis, Redis
AUTH and TLS (`rediss://`) through producer and workers, template sandbox at run time, input size
limit at submit."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from legato import Legato, Llm, Parallel, Pipeline
from legato.errors import InputError
from legato.local import processes
from legato.local.net import free_port
from legato.local.redis_server import RedisServer, find_redis_server
from legato.settings import Settings, replace
from legato.spec import Aggregate
from legato.workers.app import create_app


def _wait_in_log(service: processes.Service, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = service.log_path.read_text(errors="replace")
        if text in log:
            return log
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in the log of {service.name}:\n{service.log_tail()}")


# -- JSON only ------------------------------------------------------------------------------

class _Exploit:
    """Unpickling this creates a file: the proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def test_a_pickled_message_is_refused_and_never_runs(legato, workers, tmp_path):
    marker = tmp_path / "unpickled"
    runs_before = len(legato.runs(limit=1000))
    key = f"pickle-{uuid.uuid4().hex}"
    legato.app.send_task(
        "legato.submit", queue="legato.control", serializer="pickle",
        kwargs={"pipeline": "summarize", "input": {"text": _Exploit(marker)},
                "idempotency_key": key})
    log = _wait_in_log(workers["main"], "Refusing to deserialize untrusted content of type "
                                        "pickle")
    assert "application/x-python-serialize" in log
    time.sleep(0.5)
    assert not marker.exists()  # never unpickled
    assert len(legato.runs(limit=1000)) == runs_before  # legato.submit never ran
    # The same task sent as JSON does run: the refusal was about the serializer.
    result = legato.app.send_task("legato.submit", queue="legato.control", kwargs={
        "pipeline": "summarize", "input": {"text": "fine"}, "idempotency_key": key})
    assert legato.wait(result.get(timeout=20)["run_id"], timeout=30).status == "succeeded"


# -- secrets never in Redis -----------------------------------------------------------------

class _KeyRecorder:
    """A pass-through to the fake model that records the Authorization headers it saw."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.seen: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                recorder.seen.append(self.headers.get("Authorization", ""))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                reply = httpx.post(recorder.upstream + self.path.removeprefix("/v1"),
                                   content=body, headers={"Content-Type": "application/json"},
                                   timeout=10)
                self.send_response(reply.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _every_value(client: redis.Redis) -> Iterator[tuple[bytes, bytes]]:
    """(key, serialized content) for every key of every type in the database."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            value = client.get(key) or b""
        elif kind == b"hash":
            value = b"\n".join(k + b"=" + v for k, v in client.hgetall(key).items())
        elif kind == b"list":
            value = b"\n".join(client.lrange(key, 0, -1))
        elif kind == b"set":
            value = b"\n".join(client.smembers(key))
        elif kind == b"zset":
            value = b"\n".join(m for m, _ in client.zrange(key, 0, -1, withscores=True))
        elif kind == b"stream":
            value = b"\n".join(json.dumps({k.decode(): v.decode() for k, v in fields.items()})
                               .encode() for _, fields in client.xrange(key))
        else:
            value = b""
        yield key, value


def test_the_api_key_never_reaches_redis(stack_env, fake_model, redis_server, legato, fake,
                                         tmp_path, monkeypatch):
    secret = f"sk-legato-{uuid.uuid4().hex}"
    recorder = _KeyRecorder(fake_model)
    queue = f"legato.test.keys.{uuid.uuid4().hex[:8]}"
    env = {**stack_env, "LEGATO_MODEL_API_KEY": secret, "LEGATO_MODEL_BASE_URL": recorder.url}
    # The producer resolves model aliases (models.yaml reads the base URL from the environment)
    # and embeds them in the stored spec: it needs the base URL, never the key.
    monkeypatch.setenv("LEGATO_MODEL_BASE_URL", recorder.url)
    monkeypatch.delenv("LEGATO_MODEL_API_KEY", raising=False)
    producer = Legato(Settings.from_env())
    pipeline = Pipeline(name="keyed", steps=[
        Llm(id="draft", model="small", queue=queue, prompt="Draft about {{ input.topic }}"),
        Parallel(id="views", queue=queue, sections=[
            Llm(id="a", model="small", prompt="A view on {{ outputs.draft }}"),
            Llm(id="b", model="small", prompt="B view on {{ outputs.draft }}")],
            aggregate=Aggregate(method="concat")),
    ])
    failing = Pipeline(name="keyed_fail", steps=[
        Llm(id="boom", model="small", queue=queue, prompt="This one fails")])
    try:
        with processes.worker("keyed", [queue], env=env, concurrency=4, log_dir=tmp_path):
            ok = producer.wait(producer.submit(pipeline, {"topic": "secrets"}), timeout=30)
            fake.script({"faults": [{"kind": "status", "code": 401}]})
            bad = producer.wait(producer.submit(failing, {}), timeout=30)
    finally:
        recorder.close()
    assert ok.status == "succeeded", ok.error
    assert bad.status == "failed" and "401" in (bad.error or "")
    # The key was used: every model call carried it to the provider ...
    assert len(recorder.seen) >= 4 and set(recorder.seen) == {f"Bearer {secret}"}
    # ... and no key of any type in Redis holds it (runs, journal, specs, results, queues).
    client = redis_server.client()
    scanned = 0
    for key, value in _every_value(client):
        scanned += 1
        assert secret.encode() not in value, key
        assert secret.encode() not in key
    assert scanned > 10
    # The scan does find a value that is there: the run's input (so the search can fail).
    assert any(b"secrets" in v for _, v in _every_value(client))


# -- Redis AUTH and TLS ---------------------------------------------------------------------

_NO_RETRY = Retry(NoBackoff(), 0)  # a refusal is the answer here, not a blip to ride out


def _run_through(url: str, env: dict[str, str], tmp_path: Path, name: str) -> None:
    """A worker and a producer on `url`: a chain and a chord run to success."""
    settings = replace(Settings.from_env(), redis_url=url, broker_url="")
    with processes.worker(name, ["legato.control", "legato.llm", "legato.tools"],
                          env={**env, "LEGATO_REDIS_URL": url}, concurrency=4, log_dir=tmp_path):
        legato = Legato(settings)
        runs = [legato.submit("summarize", {"text": "through a protected Redis"}),
                legato.submit("sentiment_vote", {"review": "great"})]
        for run_id in runs:
            record = legato.wait(run_id, timeout=30)
            assert record.status == "succeeded", record.error
            assert all(s.worker.startswith(f"{name}@") for s in legato.steps(run_id))


def test_redis_auth_through_producer_and_workers(stack_env, fake, tmp_path):
    password = "p@ss:w/rd " + uuid.uuid4().hex[:6]
    with RedisServer(password=password) as server:
        assert "@127.0.0.1" in server.url
        with pytest.raises(redis.AuthenticationError), redis.Redis(
                port=server.port, retry=_NO_RETRY) as anon:
            anon.set("x", "1")
        _run_through(server.url, stack_env, tmp_path, "authed")
        wrong = server.url.replace(server.url.split("@")[0], "redis://:wrong")
        with pytest.raises(redis.AuthenticationError), redis.Redis.from_url(
                wrong, retry=_NO_RETRY) as client:
            client.ping()


def test_rediss_urls_verify_certificates_by_default():
    app = create_app(replace(Settings(), redis_url="rediss://:pw@redis.example:6380/0"))
    import ssl

    assert app.backend.connparams["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert app.connection_for_write().ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    # An explicit choice in the URL is kept.
    relaxed = create_app(Settings(redis_url="rediss://h:6380/0?ssl_cert_reqs=none"))
    assert relaxed.backend.connparams["ssl_cert_reqs"] == ssl.CERT_NONE


def _tls_redis_supported() -> bool:
    if shutil.which("openssl") is None:
        return False
    try:
        server = find_redis_server()
    except RuntimeError:
        return False
    probe = subprocess.run([server, "--tls-port", "0", "--port", "0"], capture_output=True,
                           text=True, timeout=10)
    return "not supported" not in (probe.stdout + probe.stderr).lower()


@pytest.fixture
def tls_redis(tmp_path) -> Iterator[tuple[str, Path]]:
    """A redis-server speaking only TLS (with a password), its certificate from a private CA."""
    if not _tls_redis_supported():
        pytest.skip("this redis-server was built without TLS, or openssl is missing")

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=legato-test-ca")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (tmp_path / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.cnf")
    port = free_port()
    conf = tmp_path / "redis.conf"
    conf.write_text("\n".join([
        "bind 127.0.0.1", "port 0", f"tls-port {port}", "tls-cert-file server.crt",
        "tls-key-file server.key", "tls-ca-cert-file ca.crt", "tls-auth-clients no",
        "requirepass tlspw", 'save ""', f'dir "{tmp_path}"', 'logfile "redis.log"']) + "\n")
    proc = subprocess.Popen([find_redis_server(), str(conf)], cwd=tmp_path,
                            start_new_session=True)
    url = f"rediss://:tlspw@127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.crt'}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis.from_url(url) as r:
                    r.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url, tmp_path
    finally:
        proc.terminate()
        proc.wait(10)


def test_rediss_through_producer_and_workers(tls_redis, stack_env, fake, tmp_path):
    url, certs = tls_redis
    _run_through(url, stack_env, tmp_path, "tls")
    # Verification is on: a client that does not trust the private CA is refused.
    untrusted = url.split("?")[0]
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"), \
            redis.Redis.from_url(untrusted, retry=_NO_RETRY) as client:
        client.ping()


# -- templates and sizes --------------------------------------------------------------------

def test_a_template_reaching_python_internals_fails_its_step_readably(legato, fake):
    pipeline = Pipeline(name="escape", steps=[
        Llm(id="sneaky", model="small", prompt="{{ ''.__class__.__mro__ }}")])
    run = legato.wait(legato.submit(pipeline, {}), timeout=30)
    assert run.status == "failed"
    step = legato.steps(run.id)[0]
    assert step.error_type == "PermanentError"
    assert step.error.startswith("template failed: SecurityError")
    assert "__class__" in step.error and "unsafe" in step.error
    assert run.error == f"sneaky: {step.error}"
    assert fake.stats()["requests"] == 0  # the model was never called


def test_an_input_over_the_size_limit_is_refused_at_submit(legato):
    before = len(legato.runs(limit=1000))
    big = {"text": "x" * (1024 * 1024)}
    with pytest.raises(InputError, match=r"over the limit of 1048576 \(LEGATO_MAX_INPUT_BYTES\)"):
        legato.submit("summarize", big)
    assert len(legato.runs(limit=1000)) == before
    small = Legato(replace(legato.settings, max_input_bytes=100), app=legato.app)
    with pytest.raises(InputError, match="over the limit of 100"):
        small.submit("summarize", {"text": "y" * 200})
    assert legato.submit("summarize", {"text": "y" * 200})  # the default limit lets it through


def test_a_step_output_over_the_size_limit_fails_the_step_readably(legato, fake):
    from legato import Pipeline, Tool

    pipeline = Pipeline(name="sizes", steps=[Tool(id="big", tool="blob", args={"size": 200_000})])
    run = legato.wait(legato.submit(pipeline, {}), timeout=30)
    assert run.status == "failed"
    assert run.error == ("big: output of 200002 bytes is over the limit of 100000 "
                         "(LEGATO_MAX_OUTPUT_BYTES)")
    assert legato.store.redis.hget(legato.store.keys.outputs(run.id), "big") is None

    small = legato.wait(legato.submit(Pipeline(name="sizes_ok", steps=[
        Tool(id="small", tool="blob", args={"size": 1000})]), {}), timeout=30)
    assert small.status == "succeeded" and len(small.output) == 1000
