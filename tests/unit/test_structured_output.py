"""Model calls over the OpenAI wire protocol, against an in-process fake (httpx.MockTransport).

Covers the request shape (structured output modes, deterministic defaults, headers), structured
output with repair, and the retry policy around the one HTTP call (its sleeps are recorded, not
slept).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from legato.errors import OutputInvalid, PermanentError, TransientError
from legato.models import Answer, ask, chat
from legato.models import openai_compat as oc
from legato.models.retry import MODEL_CALL
from legato.spec import ModelConfig

SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]}},
    "required": ["sentiment"],
}
CFG = ModelConfig(base_url="http://model.test/v1/", model="tiny", api_key_env="TEST_LEGATO_KEY")
MESSAGES = [{"role": "user", "content": "hi"}]


def reply(content: str, *, prompt_tokens: int = 7, completion_tokens: int = 3) -> httpx.Response:
    return httpx.Response(200, json={
        "choices": [{"message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    })


class FakeServer:
    """Answers each request with the next scripted response and keeps what it was sent."""

    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.responses:
            raise AssertionError("the fake server got more requests than scripted")
        return self.responses.pop(0)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_LEGATO_KEY", raising=False)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The retry policy's waits, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(MODEL_CALL, "sleep", recorded.append)
    yield recorded


# -- request shape -----------------------------------------------------------------------------


def test_json_schema_mode_sends_a_strict_json_schema_response_format() -> None:
    body = oc.request_body(CFG, MESSAGES, schema=SCHEMA)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA, "strict": True},
    }
    assert body["messages"] == MESSAGES


def test_json_object_mode_sends_the_schema_and_states_it_in_a_system_message() -> None:
    cfg = CFG.model_copy(update={"structured_output": "json_object"})
    body = oc.request_body(cfg, MESSAGES, schema=SCHEMA)
    assert body["response_format"] == {"type": "json_object", "schema": SCHEMA}
    stated, *rest = body["messages"]
    assert stated["role"] == "system"
    assert json.dumps(SCHEMA, separators=(",", ":")) in stated["content"]
    assert rest == MESSAGES


def test_no_schema_means_no_response_format() -> None:
    body = oc.request_body(CFG, MESSAGES)
    assert "response_format" not in body and body["messages"] == MESSAGES
    json_object = CFG.model_copy(update={"structured_output": "json_object"})
    assert oc.request_body(json_object, MESSAGES)["messages"] == MESSAGES


def test_deterministic_by_default() -> None:
    body = oc.request_body(CFG, MESSAGES)
    assert (body["model"], body["temperature"], body["seed"]) == ("tiny", 0, 0)


def test_config_params_then_step_params_override_the_defaults() -> None:
    cfg = CFG.model_copy(update={"params": {"temperature": 0.2, "max_tokens": 64}})
    body = oc.request_body(cfg, MESSAGES, params={"temperature": 0.9, "seed": 7})
    assert (body["temperature"], body["seed"], body["max_tokens"]) == (0.9, 7, 64)
    assert oc.request_body(cfg, MESSAGES)["temperature"] == 0.2


def test_the_request_goes_to_chat_completions_with_the_step_tag() -> None:
    server = FakeServer(reply("hello"))
    cfg = CFG.model_copy(update={"headers": {"X-Team": "a"}})
    completion = chat(server.client(), cfg, MESSAGES, step_tag="RUN/summary")
    assert completion.text == "hello" and completion.finish_reason == "stop"
    assert completion.usage.model_dump() == {"prompt_tokens": 7, "completion_tokens": 3,
                                             "calls": 1, "cost": 0.0}
    (request,) = server.requests
    assert (request.method, str(request.url)) == ("POST", "http://model.test/v1/chat/completions")
    assert request.headers["X-Legato-Step"] == "RUN/summary"
    assert request.headers["X-Team"] == "a"


def test_the_key_is_read_from_the_environment_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_LEGATO_KEY", "sk-test-123")
    server = FakeServer(reply("ok"))
    chat(server.client(), CFG, MESSAGES)
    assert server.requests[0].headers["Authorization"] == "Bearer sk-test-123"
    assert "sk-test-123" not in server.requests[0].content.decode()


def test_no_key_means_no_authorization_header() -> None:
    server = FakeServer(reply("ok"), reply("ok"))
    chat(server.client(), CFG, MESSAGES)  # api_key_env names an unset variable
    chat(server.client(), CFG.model_copy(update={"api_key_env": None}), MESSAGES)
    assert ["authorization" in r.headers for r in server.requests] == [False, False]
    assert "x-legato-step" not in server.requests[0].headers


# -- structured output and repair --------------------------------------------------------------


def test_plain_text_answer() -> None:
    server = FakeServer(reply("just text"))
    answer = ask(server.client(), CFG, "hi", system="be brief")
    assert answer == Answer("just text", answer.usage, [])
    assert server.bodies[0]["messages"] == [{"role": "system", "content": "be brief"},
                                            {"role": "user", "content": "hi"}]


def test_valid_json_is_parsed_and_validated() -> None:
    server = FakeServer(reply('```json\n{"sentiment": "positive"}\n```'))
    answer = ask(server.client(), CFG, "hi", output_schema=SCHEMA)
    assert answer.output == {"sentiment": "positive"} and answer.attempts == []


def test_invalid_json_is_repaired_by_asking_again() -> None:
    server = FakeServer(reply("not json at all"), reply('{"sentiment": "negative"}'))
    answer = ask(server.client(), CFG, "hi", output_schema=SCHEMA)
    assert answer.output == {"sentiment": "negative"}
    assert len(answer.attempts) == 1 and answer.attempts[0]["attempt"] == 1
    assert "not valid JSON" in answer.attempts[0]["error"]
    assert answer.usage.calls == 2 and answer.usage.prompt_tokens == 14
    # The second request shows the model its rejected reply and why.
    retry_messages = server.bodies[1]["messages"]
    assert retry_messages[-2] == {"role": "assistant", "content": "not json at all"}
    assert retry_messages[-1]["role"] == "user"
    assert "rejected: output is not valid JSON" in retry_messages[-1]["content"]


def test_json_that_fails_the_schema_is_repaired_with_the_validation_error() -> None:
    server = FakeServer(reply('{"sentiment": "meh"}'), reply('{"sentiment": "positive"}'))
    answer = ask(server.client(), CFG, "hi", output_schema=SCHEMA)
    assert answer.output == {"sentiment": "positive"}
    assert "sentiment: Input should be 'positive' or 'negative'" in answer.attempts[0]["error"]
    assert "sentiment: Input should be" in server.bodies[1]["messages"][-1]["content"]


def test_output_invalid_after_max_repairs() -> None:
    server = FakeServer(*[reply("nope") for _ in range(3)])
    with pytest.raises(OutputInvalid, match=r"not valid JSON .*\(after 2 repair attempts\)"):
        ask(server.client(), CFG, "hi", output_schema=SCHEMA, max_repairs=2)
    assert len(server.requests) == 3


def test_max_repairs_zero_means_one_try() -> None:
    server = FakeServer(reply("nope"))
    with pytest.raises(OutputInvalid):
        ask(server.client(), CFG, "hi", output_schema=SCHEMA, max_repairs=0)
    assert len(server.requests) == 1


# -- errors and retries ------------------------------------------------------------------------


def test_429_is_retried_after_the_servers_retry_after(sleeps: list[float]) -> None:
    server = FakeServer(httpx.Response(429, headers={"Retry-After": "0.25"}), reply("ok"))
    assert chat(server.client(), CFG, MESSAGES).text == "ok"
    assert len(server.requests) == 2
    assert sleeps == [0.25]


def test_429_every_time_is_a_transient_error_with_retry_after(sleeps: list[float]) -> None:
    limited = [httpx.Response(429, headers={"Retry-After": "0"},
                              json={"error": {"message": "slow down"}}) for _ in range(4)]
    server = FakeServer(*limited)
    with pytest.raises(TransientError, match="HTTP 429 from tiny: slow down") as info:
        chat(server.client(), CFG, MESSAGES)
    assert (info.value.status_code, info.value.retry_after) == (429, 0.0)
    assert len(server.requests) == 4  # stop_after_attempt(4)
    assert sleeps == [0.0, 0.0, 0.0]


def test_400_is_permanent_and_not_retried(sleeps: list[float]) -> None:
    server = FakeServer(httpx.Response(400, json={"error": {"message": "context too long"}}))
    with pytest.raises(PermanentError, match="HTTP 400 from tiny: context too long") as info:
        chat(server.client(), CFG, MESSAGES)
    assert info.value.status_code == 400
    assert len(server.requests) == 1 and sleeps == []


def test_500_twice_then_success(sleeps: list[float]) -> None:
    server = FakeServer(httpx.Response(500, text="oops"), httpx.Response(503), reply("fine"))
    assert chat(server.client(), CFG, MESSAGES).text == "fine"
    assert len(server.requests) == 3
    assert len(sleeps) == 2 and all(0 <= s <= 20 for s in sleeps)  # jittered backoff


def test_connection_errors_and_malformed_replies_are_transient(sleeps: list[float]) -> None:
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(1)
        if len(seen) == 1:
            raise httpx.ConnectError("connection refused", request=request)
        if len(seen) == 2:
            return httpx.Response(200, json={"choices": []})  # no choice: malformed
        return reply("ok")

    client = httpx.Client(transport=httpx.MockTransport(handler))
    assert chat(client, CFG, MESSAGES).text == "ok"
    assert len(seen) == 3 and len(sleeps) == 2


def test_structured_ask_retries_transport_failures_inside_one_attempt(
    sleeps: list[float],
) -> None:
    server = FakeServer(httpx.Response(502), reply('{"sentiment": "positive"}'))
    answer = ask(server.client(), CFG, "hi", output_schema=SCHEMA)
    assert answer.output == {"sentiment": "positive"}
    assert answer.attempts == [] and answer.usage.calls == 1
