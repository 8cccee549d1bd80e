"""Model transports against the real fake model server (its own process): answers, errors mapped
to Legato's types, timeouts, refused connections, many calls in flight, and no use after fork."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import httpx
import pytest

from legato.errors import PermanentError, TransientError
from legato.local.net import free_port
from legato.models import openai_compat
from legato.models.transport import (
    HttpxTransport,
    LoopTransport,
    Transport,
    WireResponse,
    as_transport,
)
from legato.settings import Settings, get_settings
from legato.spec import ModelConfig
from tests.conftest import FakeModel

MESSAGES = [{"role": "user", "content": "hello there"}]
BODY = {"model": "m", "messages": MESSAGES}


@pytest.fixture
def loop_transport() -> Iterator[LoopTransport]:
    transport = LoopTransport(max_connections=256, timeout=5)
    yield transport
    transport.close()


@pytest.fixture(params=["aiohttp", "httpx"])
def transport(request: pytest.FixtureRequest) -> Iterator[Transport]:
    """Each transport in turn: the errors must come out the same from both."""
    if request.param == "aiohttp":
        loop = LoopTransport(max_connections=16, timeout=5)
        yield loop
        loop.close()
    else:
        with httpx.Client(timeout=5) as client:
            yield HttpxTransport(client)


def cfg(base_url: str, **extra: Any) -> ModelConfig:
    return ModelConfig(base_url=base_url, model="m", **extra)


def test_a_200_answer_is_parsed(transport: Transport, fake: FakeModel, fake_model: str) -> None:
    completion = openai_compat.post(transport, cfg(fake_model), MESSAGES, step_tag="run1/a")
    assert completion.text and completion.usage.prompt_tokens > 0
    assert completion.finish_reason == "stop"
    assert fake.stats()["by_step"] == {"run1/a": 1}  # the headers went out too


def test_a_wire_response_has_status_case_insensitive_headers_and_json(
        transport: Transport, fake: FakeModel, fake_model: str) -> None:
    response = transport.post(f"{fake_model}/chat/completions", json=BODY, headers={},
                              timeout=None)
    assert isinstance(response, WireResponse) and response.status == 200
    assert response.header("Content-Type") == response.header("content-type")
    assert "application/json" in (response.header("CONTENT-TYPE") or "")
    assert response.json()["choices"][0]["message"]["content"]
    assert response.text.startswith("{")


def test_the_request_is_logged_with_the_calling_steps_context(
        loop_transport: LoopTransport, fake: FakeModel, fake_model: str,
        caplog: pytest.LogCaptureFixture) -> None:
    # Logged on the loop thread, yet it must say which run and step made the call.
    from legato.workers.observability import StepContextFilter, in_step

    caplog.set_level(logging.INFO, logger="legato.models.transport")
    caplog.handler.addFilter(StepContextFilter())
    with in_step("run9", "summary"):
        loop_transport.post(f"{fake_model}/chat/completions", json=BODY, headers={}, timeout=None)
    lines = [r for r in caplog.records if r.getMessage().startswith("HTTP Request: POST ")]
    assert len(lines) == 1 and '"HTTP/1.1 200 OK"' in lines[0].getMessage()
    assert (lines[0].run_id, lines[0].step) == ("run9", "summary")  # type: ignore[attr-defined]


def test_429_is_transient_with_the_servers_retry_after(transport: Transport, fake: FakeModel,
                                                       fake_model: str) -> None:
    fake.script({"faults": [{"kind": "status", "code": 429, "retry_after": 2}]})
    with pytest.raises(TransientError, match="HTTP 429 from m") as caught:
        openai_compat.post(transport, cfg(fake_model), MESSAGES)
    assert caught.value.status_code == 429 and caught.value.retry_after == 2.0


def test_400_is_permanent(transport: Transport, fake: FakeModel, fake_model: str) -> None:
    fake.script({"faults": [{"kind": "status", "code": 400, "body": "bad request"}]})
    with pytest.raises(PermanentError, match="HTTP 400 from m: bad request") as caught:
        openai_compat.post(transport, cfg(fake_model), MESSAGES)
    assert caught.value.status_code == 400


def test_a_slow_answer_times_out_as_transient(transport: Transport, fake: FakeModel,
                                              fake_model: str) -> None:
    fake.script({"latency_ms": 3000})
    started = time.monotonic()
    with pytest.raises(TransientError, match="model call timed out: "):
        openai_compat.post(transport, cfg(fake_model, timeout=0.3), MESSAGES)
    assert time.monotonic() - started < 2  # the model's timeout, not the transport's 5 s


def test_timeout_none_is_the_transports_default_not_no_timeout(fake: FakeModel,
                                                               fake_model: str) -> None:
    fake.script({"latency_ms": 3000})
    transport = LoopTransport(max_connections=4, timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(TransientError, match="timed out"):
            transport.post(f"{fake_model}/chat/completions", json=BODY, headers={}, timeout=None)
        assert time.monotonic() - started < 2
    finally:
        transport.close()


def test_a_refused_connection_is_transient_unreachable(transport: Transport) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with pytest.raises(TransientError, match="model server unreachable: "):
        openai_compat.post(transport, cfg(closed), MESSAGES)


def test_a_dropped_connection_is_transient_unreachable(transport: Transport, fake: FakeModel,
                                                       fake_model: str) -> None:
    fake.script({"faults": [{"kind": "drop", "times": 1}]})
    with pytest.raises(TransientError, match="model server unreachable: "):
        openai_compat.post(transport, cfg(fake_model), MESSAGES)
    assert openai_compat.post(transport, cfg(fake_model), MESSAGES).text  # next one is fine


def test_200_calls_submitted_from_one_thread_run_concurrently(
        loop_transport: LoopTransport, fake: FakeModel, fake_model: str) -> None:
    fake.script({"latency_ms": 200})
    url = f"{fake_model}/chat/completions"
    started = time.monotonic()
    futures = [loop_transport.submit(url, json=BODY, headers={}, timeout=None)
               for _ in range(200)]
    done, _ = wait(futures, timeout=30)
    elapsed = time.monotonic() - started
    assert [f.result().status for f in done] == [200] * 200
    assert elapsed < 3, f"200 calls at 200 ms took {elapsed:.1f} s: not concurrent"
    assert fake.stats()["max_in_flight"] >= 50


def test_many_threads_share_one_loop_transport(loop_transport: LoopTransport, fake: FakeModel,
                                               fake_model: str) -> None:
    fake.script({"latency_ms": 100})
    config = cfg(fake_model)
    with ThreadPoolExecutor(64) as pool:
        started = time.monotonic()
        texts = list(pool.map(lambda _: openai_compat.post(loop_transport, config, MESSAGES).text,
                              range(64)))
    assert len(texts) == 64 and all(texts)
    assert time.monotonic() - started < 3  # 64 × 100 ms one after another would be 6.4 s


def test_apost_runs_on_the_transports_loop(loop_transport: LoopTransport, fake: FakeModel,
                                           fake_model: str) -> None:
    async def two() -> list[WireResponse]:
        url = f"{fake_model}/chat/completions"
        return list(await asyncio.gather(
            *(loop_transport.apost(url, json=BODY, headers={}, timeout=None) for _ in range(2))))

    answers = asyncio.run_coroutine_threadsafe(two(), loop_transport.loop).result(10)
    assert [a.status for a in answers] == [200, 200]


def test_a_loop_transport_refuses_use_in_a_forked_child(loop_transport: LoopTransport,
                                                        fake: FakeModel, fake_model: str) -> None:
    url = f"{fake_model}/chat/completions"
    assert loop_transport.post(url, json=BODY, headers={}, timeout=None).status == 200
    pid = os.fork()
    if pid == 0:  # the child: must refuse at once, not hang on the parent's (absent) loop thread
        code = 1
        try:
            loop_transport.post(url, json=BODY, headers={}, timeout=1)
        except RuntimeError as exc:
            code = 0 if "fork" in str(exc) else 2
        except BaseException:
            code = 3
        try:
            loop_transport.close()  # only forgets in a child; must not raise or hang
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert loop_transport.post(url, json=BODY, headers={}, timeout=None).status == 200


def test_a_closed_loop_transport_refuses_calls(fake_model: str) -> None:
    transport = LoopTransport(max_connections=4, timeout=5)
    transport.close()
    transport.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        transport.post(f"{fake_model}/chat/completions", json=BODY, headers={}, timeout=None)


def test_as_transport_wraps_an_httpx_client_and_keeps_a_transport() -> None:
    with httpx.Client() as client:
        wrapped = as_transport(client)
        assert isinstance(wrapped, HttpxTransport) and wrapped.client is client
        assert as_transport(wrapped) is wrapped


def test_the_workers_transport_follows_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from legato.workers import resources

    assert Settings().model_transport == "aiohttp"
    try:
        for setting, kind in (("aiohttp", LoopTransport), ("httpx", HttpxTransport)):
            monkeypatch.setenv("LEGATO_MODEL_TRANSPORT", setting)
            get_settings.cache_clear()
            resources.reset()
            made = resources.transport()
            assert isinstance(made, kind) and resources.transport() is made
            resources.reset()
            assert resources.transport() is not made
            if isinstance(made, LoopTransport):
                with pytest.raises(RuntimeError, match="closed"):  # reset closed it
                    made.post("http://127.0.0.1:1/", json={}, headers={}, timeout=1)
        monkeypatch.setenv("LEGATO_MODEL_TRANSPORT", "curl")
        with pytest.raises(ValueError, match="LEGATO_MODEL_TRANSPORT"):
            Settings.from_env()
    finally:
        resources.reset()
        get_settings.cache_clear()
