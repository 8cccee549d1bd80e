"""The typed entries of a step record's detail (model calls, repairs, tool calls) and messages:
checked on the way in, journaled as the same JSON as before they had types."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from legato.envelope import (
    FunctionCall,
    HttpAttempt,
    Message,
    MessageToolCall,
    ModelAttempt,
    Repair,
    StepRecord,
    StepRef,
    ToolCall,
)
from legato.errors import TransientError
from legato.models import Gateway, openai_compat
from legato.models.cache import cache_key
from legato.spec import ModelConfig

MESSAGES = [{"role": "user", "content": "hi"}]


def models() -> dict[str, ModelConfig]:
    return {"a": ModelConfig(base_url="http://a.test/v1", model="a", fallbacks=["b"],
                             max_attempts=2),
            "b": ModelConfig(base_url="http://b.test/v1", model="b")}


def test_a_trace_is_model_attempts_journaled_as_the_json_it_always_was() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("X-Legato-Step"))
        if request.url.host == "a.test":
            return httpx.Response(503, headers={"Retry-After": "0.5"},
                                  json={"error": {"message": "down"}})
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})

    gateway = Gateway(httpx.Client(transport=httpx.MockTransport(handler)), sleep=lambda _: None)
    trace: list[ModelAttempt] = []
    step = StepRef(run_id="RUN", path="brief/turn[1]")
    gateway.complete(models(), "a", MESSAGES, step=step, trace=trace)
    assert seen == ["RUN/brief/turn[1]"] * 3
    assert all(isinstance(t, ModelAttempt) for t in trace)
    assert trace[0].attempts is not None and trace[0].attempts[0].wait == 0.5
    record = StepRecord(path="x", status="succeeded", detail={"model_calls": trace})
    journaled = json.loads(record.model_dump_json())["detail"]["model_calls"]
    for attempt in journaled[0]["attempts"]:
        assert attempt["seconds"] >= 0
        attempt["seconds"] = 0
    journaled[1]["attempts"][0]["seconds"] = 0
    assert journaled == [
        {"model": "a", "outcome": "failed", "attempts": [
            {"error": "HTTP 503 from a: down", "type": "TransientError", "seconds": 0,
             "status": 503, "retry_after": 0.5, "wait": 0.5},
            {"error": "HTTP 503 from a: down", "type": "TransientError", "seconds": 0,
             "status": 503, "retry_after": 0.5}]},
        {"model": "b", "attempts": [{"status": 200, "seconds": 0}], "outcome": "ok"},
    ]
    assert StepRecord.model_validate_json(record.model_dump_json()).model_calls == trace


def test_records_written_before_the_types_read_as_typed() -> None:
    raw = json.dumps({"path": "a", "status": "failed", "detail": {
        "model_calls": [{"model": "m", "cached": "0123456789abcdef", "outcome": "ok"},
                        {"model": "n", "attempts": [], "outcome": "circuit open"},
                        {"model": "o", "attempts": [{"error": "x", "type": "TransientError",
                                                     "seconds": 0.1}],
                         "rate_limited": 1.5, "outcome": "failed"}],
        "repairs": [{"attempt": 1, "error": "output is not valid JSON"}]}})
    record = StepRecord.model_validate_json(raw)
    cached, skipped, failed = record.model_calls
    assert cached.cached == "0123456789abcdef" and cached.attempts is None
    assert skipped.outcome == "circuit open" and skipped.attempts == []
    assert failed.rate_limited == 1.5 and failed.attempts == [
        HttpAttempt(error="x", type="TransientError", seconds=0.1)]
    assert record.repairs == [Repair(attempt=1, error="output is not valid JSON")]


@pytest.mark.parametrize("bad", [
    {"model": "m", "outcome": "fine"},  # no such outcome
    {"model": "m", "attempts": [{"status": 200}]},  # an attempt without its seconds
    {"outcome": "ok"},  # which model?
    {"model": "m", "outcome": "ok", "surprise": 1},
])
def test_a_malformed_model_call_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ModelAttempt.model_validate(bad)


def test_the_typed_entries_still_read_like_their_json() -> None:
    attempt = HttpAttempt(status=200, seconds=0.2)
    assert attempt["status"] == 200 and "wait" not in attempt and attempt.get("wait") is None
    with pytest.raises(KeyError):
        attempt["wait"]  # noqa: B018
    call = ToolCall(name="count", arguments={"text": "a b"})
    assert call == {"id": None, "name": "count", "arguments": {"text": "a b"}}
    assert {**call, "id": "c1"} == {"id": "c1", "name": "count", "arguments": {"text": "a b"}}
    assert call.model_dump() == {"id": None, "name": "count", "arguments": {"text": "a b"}}


def test_tool_calls_whose_arguments_are_no_object_are_a_malformed_answer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [{"message": {"content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}}]})

    with pytest.raises(TransientError, match="malformed response"):
        openai_compat.post(httpx.Client(transport=httpx.MockTransport(handler)), models()["b"],
                           MESSAGES)


def test_messages_are_checked_and_keep_their_wire_form_and_cache_key() -> None:
    transcript: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "count", "arguments": '{"text": "a b"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"tool": "count", "result": 2}'},
    ]
    typed = [Message.model_validate(m) for m in transcript]
    assert [m.wire() for m in typed] == transcript
    built = Message(role="assistant", content=None, tool_calls=[MessageToolCall(
        id="c1", function=FunctionCall(name="count", arguments='{"text": "a b"}'))])
    assert built.wire() == transcript[2]  # `type` goes on the wire though it is the default
    # The key the cache gave this call before messages had a type (recorded runs still replay).
    pinned = "2871450ecde42601dc296b2fada927e17248125dfcf861f47bc1a578f3bc1485"
    for messages in (transcript, typed):
        assert cache_key(models()["b"].model_copy(update={"model": "a",
                                                          "base_url": "http://a.test/v1"}),
                         messages, schema={"type": "object"}, params={"seed": 3}) == pinned
    with pytest.raises(ValidationError):
        Message.model_validate({"role": "robot", "content": "beep"})
    with pytest.raises(ValidationError):
        Message.model_validate({"role": "user", "content": "x", "extra": 1})


def test_a_step_is_named_by_fields() -> None:
    step = StepRef(run_id="r1", path="research/turn[2]")
    assert (step.tag, step.parent, str(step)) == ("r1/research/turn[2]", "research",
                                                  "r1/research/turn[2]")
    with pytest.raises(ValidationError):
        step.path = "other"  # type: ignore[misc]
