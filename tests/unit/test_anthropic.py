"""The Anthropic Messages API wire, against httpx.MockTransport: request shape, parsing, errors,
and the same gateway and structured-output path as the OpenAI protocol."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from legato.errors import PermanentError, TransientError
from legato.models import Gateway, anthropic, ask
from legato.spec import ModelConfig

CFG = ModelConfig(base_url="https://api.anthropic.test/v1", model="claude-test",
                  protocol="anthropic", api_key_env="TEST_ANTHROPIC_KEY",
                  params={"temperature": 0, "seed": 3})
SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}


def message(*content: dict[str, Any], stop: str = "end_turn") -> httpx.Response:
    return httpx.Response(200, json={
        "id": "msg_1", "type": "message", "role": "assistant", "content": list(content),
        "stop_reason": stop, "usage": {"input_tokens": 12, "output_tokens": 4},
    })


class Server:
    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.responses.pop(0)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))

    def body(self, i: int = 0) -> dict[str, Any]:
        return json.loads(self.requests[i].content)


def test_request_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant-test")
    server = Server(message({"type": "text", "text": "hello"}))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    completion = anthropic.post(server.client(), CFG, messages, step_tag="RUN/step")

    request = server.requests[0]
    assert str(request.url) == "https://api.anthropic.test/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant-test"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert request.headers["x-legato-step"] == "RUN/step"
    body = server.body()
    assert body["system"] == "be brief"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["max_tokens"] == anthropic.DEFAULT_MAX_TOKENS and body["temperature"] == 0
    assert "seed" not in body  # the API takes no seed
    assert completion.text == "hello" and completion.finish_reason == "end_turn"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 4)


def test_tool_use_blocks_are_parsed() -> None:
    server = Server(message(
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "tu_1", "name": "search", "input": {"q": "cats"}},
        stop="tool_use"))
    completion = anthropic.post(server.client(), CFG, [{"role": "user", "content": "cats?"}])
    assert completion.tool_calls == ({"id": "tu_1", "name": "search", "arguments": {"q": "cats"}},)
    assert completion.text == "Let me look." and completion.finish_reason == "tool_use"


def test_a_schema_is_asked_for_through_a_forced_tool_and_repaired() -> None:
    server = Server(
        message({"type": "tool_use", "id": "a", "name": "answer", "input": {"nope": 1}}),
        message({"type": "tool_use", "id": "b", "name": "answer", "input": {"label": "ok"}}),
    )
    answer = ask(server.client(), CFG, "classify", output_schema=SCHEMA,
                 complete=lambda m, s, p: Gateway(server.client()).complete(
                     {"c": CFG}, "c", m, schema=s, params=p))
    assert answer.output == {"label": "ok"} and len(answer.attempts) == 1
    first = server.body(0)
    assert first["tools"][0]["input_schema"] == SCHEMA
    assert first["tool_choice"] == {"type": "tool", "name": "answer"}
    assert "does not match the schema" in server.body(1)["messages"][-1]["content"]


def test_errors_map_to_the_same_types() -> None:
    overloaded = Server(httpx.Response(529, headers={"retry-after": "2"},
                                       json={"type": "error", "error": {"message": "overloaded"}}))
    with pytest.raises(TransientError, match="HTTP 529 from claude-test: overloaded") as info:
        anthropic.post(overloaded.client(), CFG, [{"role": "user", "content": "x"}])
    assert info.value.retry_after == 2.0
    too_long = Server(httpx.Response(400, json={"type": "error", "error": {
        "type": "invalid_request_error", "message": "prompt is too long: 210000 tokens"}}))
    with pytest.raises(PermanentError, match="context too long for claude-test"):
        anthropic.post(too_long.client(), CFG, [{"role": "user", "content": "x"}])


def test_the_gateway_falls_back_across_protocols() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/messages"):
            return httpx.Response(503, json={"error": {"message": "down"}})
        return httpx.Response(200, json={"choices": [{"message": {"content": "from openai"}}],
                                          "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    models = {"claude": CFG.model_copy(update={"fallbacks": ["gpt"], "max_attempts": 2}),
              "gpt": ModelConfig(base_url="https://openai.test/v1", model="gpt-test")}
    gateway = Gateway(httpx.Client(transport=httpx.MockTransport(handler)), sleep=lambda _: None)
    trace: list[dict[str, Any]] = []
    completion = gateway.complete(models, "claude", [{"role": "user", "content": "x"}],
                                  trace=trace)
    assert completion.text == "from openai"
    assert [(c["model"], c["outcome"], len(c["attempts"])) for c in trace] == [
        ("claude", "failed", 2), ("gpt", "ok", 1)]
    assert trace[0]["attempts"][0]["status"] == 503 and "wait" in trace[0]["attempts"][0]
