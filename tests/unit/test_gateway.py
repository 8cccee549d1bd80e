"""The gateway's policies that need no Redis: bounded retries, waits as told, fallbacks by type."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from legato.errors import PermanentError, TransientError
from legato.models import Gateway
from legato.models.retry import first_then
from legato.spec import ModelConfig

MESSAGES = [{"role": "user", "content": "hi"}]


def ok(text: str = "ok") -> httpx.Response:
    return httpx.Response(200, json={"choices": [{"message": {"content": text}}],
                                     "usage": {"prompt_tokens": 2, "completion_tokens": 1}})


def gateway(handler: Any, slept: list[float]) -> Gateway:
    return Gateway(httpx.Client(transport=httpx.MockTransport(handler)), sleep=slept.append)


def models(**primary: Any) -> dict[str, ModelConfig]:
    return {"a": ModelConfig(base_url="http://a.test/v1", model="a", **primary),
            "b": ModelConfig(base_url="http://b.test/v1", model="b")}


def test_a_retry_after_longer_than_the_wait_left_falls_back_at_once() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "a.test":
            return httpx.Response(429, headers={"Retry-After": "30"})
        return ok("from b")

    slept: list[float] = []
    trace: list[dict[str, Any]] = []
    cfgs = models(fallbacks=["b"], max_retry_wait=10)
    assert gateway(handler, slept).complete(cfgs, "a", MESSAGES, trace=trace).text == "from b"
    assert seen == ["a.test", "b.test"] and slept == []
    assert trace[0]["attempts"][0]["retry_after"] == 30.0


def test_attempts_and_total_wait_are_bounded() -> None:
    slept: list[float] = []
    trace: list[dict[str, Any]] = []
    down = gateway(lambda r: httpx.Response(429, headers={"Retry-After": "4"}), slept)
    with pytest.raises(TransientError, match=r"HTTP 429 from a.*\(tried a\)"):
        down.complete(models(max_attempts=10, max_retry_wait=10), "a", MESSAGES, trace=trace)
    assert slept == [4.0, 4.0]  # a third wait of 4s would pass 10s in total: it gives up
    assert len(trace[0]["attempts"]) == 3


def test_a_transient_failure_then_an_answer_retries_once_with_its_wait() -> None:
    answers = iter([httpx.Response(503, headers={"Retry-After": "2"}), ok("second")])
    slept: list[float] = []
    trace: list[dict[str, Any]] = []
    got = gateway(lambda r: next(answers), slept).complete(models(max_attempts=2), "a",
                                                           MESSAGES, trace=trace)
    assert got.text == "second" and slept == [2.0]
    assert [a["status"] for a in trace[0]["attempts"]] == [503, 200]
    assert trace[0]["attempts"][0]["wait"] == 2.0


def test_first_then_builds_the_policy_only_for_a_transient_failure() -> None:
    built: list[int] = []

    def policy() -> Retrying:
        built.append(1)
        return Retrying(retry=retry_if_exception_type(TransientError),
                        stop=stop_after_attempt(3), sleep=lambda s: None, reraise=True)

    assert first_then(policy, lambda: "at once") == "at once" and built == []
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("not yet")
        return "third"

    assert first_then(policy, flaky) == "third" and built == [1] and len(calls) == 3
    tries: list[int] = []

    def down() -> str:
        tries.append(1)
        raise TransientError("down")

    with pytest.raises(TransientError):
        first_then(policy, down)
    assert len(tries) == 3  # the first attempt counts: 3 in all, not 4

    def refused() -> str:
        raise PermanentError("no")

    with pytest.raises(PermanentError):  # not retried, and no policy made for it
        first_then(policy, refused)
    assert built == [1, 1]


def test_a_permanent_error_does_not_fall_back() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        return httpx.Response(401, json={"error": {"message": "bad key"}})

    with pytest.raises(PermanentError, match="HTTP 401 from a: bad key"):
        gateway(handler, []).complete(models(fallbacks=["b"]), "a", MESSAGES)
    assert seen == ["a.test"]


def test_prices_give_each_call_its_cost() -> None:
    cfgs = {"a": ModelConfig(base_url="http://a.test/v1", model="a",
                             prices={"input_per_mtok": 3.0, "output_per_mtok": 15.0})}
    completion = gateway(lambda r: ok(), []).complete(cfgs, "a", MESSAGES)
    assert completion.usage.cost == pytest.approx((2 * 3.0 + 1 * 15.0) / 1e6)


def test_the_clients_timeout_applies_unless_the_model_sets_its_own() -> None:
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"]["read"])
        return ok()

    client = httpx.Client(transport=httpx.MockTransport(handler), timeout=7)
    cfgs = models()
    Gateway(client).complete(cfgs, "a", MESSAGES)
    Gateway(client).complete({"a": cfgs["a"].model_copy(update={"timeout": 2.5})}, "a", MESSAGES)
    assert seen == [7, 2.5]  # never None: that would wait for a hung server forever
