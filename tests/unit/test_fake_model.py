"""The fake model server, started for real on 127.0.0.1 and spoken to over HTTP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from legato.local.fake_model import (
    FakeModelServer,
    load_script,
    schema_instance,
    start_in_thread,
    validate_script,
)

ROOT = Path(__file__).resolve().parents[2]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 30},
        "count": {"type": "integer", "minimum": 3, "maximum": 7},
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "ok": {"type": "boolean"},
        "mood": {"enum": ["happy", "sad", "neutral"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 3},
        "note": {"anyOf": [{"type": "null"}, {"type": "string"}]},
        "maybe": {"type": ["integer", "null"]},
        "when": {"type": "string", "format": "date-time"},
    },
    "required": ["title", "count", "score", "ok", "mood", "tags", "items", "note", "maybe"],
    "$defs": {
        "Item": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
            "required": ["name", "qty"],
            "additionalProperties": False,
        }
    },
}

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
    "integer": int,
    "number": (int, float),
}


def _is(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    return isinstance(value, _TYPES[kind])


def check(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> None:
    """A small validator: $ref, anyOf, type (lists too), enum, bounds, lengths, required."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return check(value, root["$defs"][name], root)
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                return check(value, option, root)
            except AssertionError as exc:
                errors.append(exc)
        raise AssertionError(f"{value!r} matches no anyOf option: {errors}")
    if "enum" in schema:
        assert value in schema["enum"], (value, schema["enum"])
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        assert any(_is(value, k) for k in kinds), (value, kinds)
    if isinstance(value, int | float) and not isinstance(value, bool):
        assert value >= schema.get("minimum", value) and value <= schema.get("maximum", value)
        assert value > schema.get("exclusiveMinimum", value - 1)
    if isinstance(value, str):
        assert len(value) <= schema.get("maxLength", len(value))
    if isinstance(value, list):
        assert schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value))
        for item in value:
            check(item, schema.get("items", {}), root)
    if isinstance(value, dict):
        assert set(schema.get("required", [])) <= set(value), (schema.get("required"), value)
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(schema.get("properties", {}))
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                check(value[key], sub, root)


@pytest.fixture
def fake() -> Iterator[Callable[..., httpx.Client]]:
    """Start a server with a script; returns an httpx client on its /v1 base URL."""
    started: list[Any] = []

    def start(script: dict[str, Any] | None = None) -> httpx.Client:
        handle = start_in_thread(script)
        client = httpx.Client(base_url=handle.url, timeout=5)
        started.append((handle, client))
        return client

    yield start
    for handle, client in started:
        client.close()
        handle.stop()


def chat(
    client: httpx.Client,
    text: str = "hello there",
    *,
    model: str = "m",
    system: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    body = {"model": model, "messages": messages, **extra}
    return client.post("/chat/completions", json=body, headers=headers)


def content(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def admin(client: httpx.Client, method: str, path: str, **kw: Any) -> httpx.Response:
    root = str(client.base_url).removesuffix("/v1/").removesuffix("/v1")
    return client.request(method, root + path, **kw)


def stats(client: httpx.Client) -> dict[str, Any]:
    return admin(client, "GET", "/_fake/stats").json()


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}


# --- derived replies ---------------------------------------------------------------------------


def test_derived_text_echoes_the_last_user_message_with_usage(fake):
    client = fake()
    body = {
        "model": "small",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second one"}]},
        ],
    }
    data = client.post("/chat/completions", json=body).json()
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "[fake:small] second one"}
    assert choice["finish_reason"] == "stop"
    assert data["object"] == "chat.completion" and data["model"] == "small"
    prompt_chars = len("be brief") + len("first") + len("ok") + len("second one")
    assert data["usage"] == {
        "prompt_tokens": prompt_chars // 4,
        "completion_tokens": len("[fake:small] second one") // 4,
        "total_tokens": prompt_chars // 4 + len("[fake:small] second one") // 4,
    }


def test_derived_text_is_cut_to_200_characters(fake):
    text = content(chat(fake(), "word " * 100))
    assert len(text) == 200 and text.startswith("[fake:m] word word")


def test_json_schema_reply_is_a_valid_instance(fake):
    client = fake()
    instance = json.loads(
        content(chat(client, "plan a picnic", response_format=schema_format(SCHEMA)))
    )
    check(instance, SCHEMA, SCHEMA)
    assert set(instance) >= set(SCHEMA["required"])
    assert len(instance["items"]) == 3 and len(instance["tags"]) == 2
    assert "picnic" in instance["title"]  # strings come from the prompt


def test_enum_choice_follows_the_messages(fake):
    client = fake()
    schema = {
        "type": "object",
        "properties": {"pick": {"enum": list("abcdefgh")}},
        "required": ["pick"],
    }
    picks = {
        json.loads(content(chat(client, f"prompt {i}", response_format=schema_format(schema))))[
            "pick"
        ]
        for i in range(12)
    }
    assert len(picks) > 1


def test_json_object_reply_has_an_answer(fake):
    reply = json.loads(content(chat(fake(), "hi", response_format={"type": "json_object"})))
    assert reply == {"answer": "[fake:m] hi"}


def test_same_request_gives_identical_bytes(fake):
    client = fake({"latency_ms": 1, "jitter_ms": 5, "seed": 7})
    kw: dict[str, Any] = {"response_format": schema_format(SCHEMA), "temperature": 0.7}
    first, second = chat(client, "same", **kw), chat(client, "same", **kw)
    assert first.status_code == 200 and first.content == second.content
    assert chat(client, "other", **kw).content != first.content


def test_recursive_schema_instance_is_finite():
    schema = {
        "$ref": "#/$defs/Node",
        "$defs": {
            "Node": {
                "type": "object",
                "required": ["name", "children"],
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                    "parent": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                },
            }
        },
    }
    value = schema_instance(schema, "seed", "a tree")
    assert value == schema_instance(schema, "seed", "a tree")
    assert len(json.dumps(value)) < 10_000_000 and "children" in value


# --- scripted replies -------------------------------------------------------------------------


def test_first_matching_rule_wins(fake):
    client = fake(
        {
            "rules": [
                {"match": {"model": "big", "contains": "weather"}, "reply": "big weather"},
                {"match": {"contains": "weather"}, "reply": {"temp": 21, "sky": ["clear"]}},
                {"match": {"system_contains": "classifier"}, "reply": "billing"},
                {"match": {"any_contains": "ancient"}, "reply": "history"},
                {"match": {}, "reply": "catch-all"},
            ]
        }
    )
    assert content(chat(client, "weather?", model="big")) == "big weather"
    assert json.loads(content(chat(client, "weather?"))) == {"temp": 21, "sky": ["clear"]}
    assert content(chat(client, "ticket", system="you are a classifier")) == "billing"
    assert content(chat(client, "x", system="ancient texts")) == "history"
    assert content(chat(client, "nothing special")) == "catch-all"


def test_tool_calls_rule(fake):
    client = fake(
        {
            "rules": [
                {
                    "match": {"contains": "search"},
                    "tool_calls": [
                        {"name": "web_search", "arguments": {"q": "cats"}},
                        {"name": "clock"},
                    ],
                }
            ]
        }
    )
    first = chat(
        client, "please search", tools=[{"type": "function", "function": {"name": "web_search"}}]
    )
    choice = first.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["web_search", "clock"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"q": "cats"}
    assert json.loads(calls[1]["function"]["arguments"]) == {}
    assert calls[0]["type"] == "function" and calls[0]["id"] != calls[1]["id"]
    assert choice["message"]["content"] is None
    again = chat(
        client, "please search", tools=[{"type": "function", "function": {"name": "web_search"}}]
    )
    assert again.content == first.content  # deterministic ids


# --- faults -----------------------------------------------------------------------------------


def test_status_429_with_retry_after(fake):
    client = fake({"faults": [{"kind": "status", "code": 429, "retry_after": 2}]})
    response = chat(client)
    assert response.status_code == 429 and response.headers["retry-after"] == "2"
    error = response.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["message"] and "type" in error


def test_status_500_twice_then_success(fake):
    client = fake({"faults": [{"kind": "status", "code": 500, "times": 2, "body": "boom"}]})
    codes = [chat(client).status_code for _ in range(4)]
    assert codes == [500, 500, 200, 200]
    assert stats(client)["by_status"] == {"500": 2, "200": 2}


def test_context_length_400(fake):
    client = fake({"faults": [{"kind": "status", "code": 400, "match": {"contains": "long"}}]})
    response = chat(client, "a very long prompt")
    assert response.status_code == 400
    error = response.json()["error"]
    assert "context length" in error["message"] and error["code"] == "context_length_exceeded"
    assert chat(client, "short").status_code == 200


def test_malformed_content_is_not_json(fake):
    client = fake({"faults": [{"kind": "malformed", "every": 2}]})
    fmt: dict[str, Any] = {"response_format": schema_format(SCHEMA)}
    json.loads(content(chat(client, "one", **fmt)))  # 1st matching request: fine
    with pytest.raises(json.JSONDecodeError):
        json.loads(content(chat(client, "two", **fmt)))
    with pytest.raises(json.JSONDecodeError):
        json.loads(content(chat(client, "plain text, no format")))  # 4th: fires again


def test_hang_outlasts_the_client_timeout(fake):
    client = fake({"faults": [{"kind": "hang", "seconds": 1.5, "times": 1}]})
    body = {"model": "m", "messages": [{"role": "user", "content": "slow"}]}
    with pytest.raises(httpx.ReadTimeout):
        client.post("/chat/completions", json=body, timeout=0.3)
    assert stats(client)["in_flight"] == 1
    started = time.monotonic()
    assert chat(client).status_code == 200 and time.monotonic() - started < 1


def test_drop_closes_the_connection_without_a_response(fake):
    client = fake({"faults": [{"kind": "drop", "times": 1}]})
    with pytest.raises(httpx.TransportError):
        chat(client)
    assert chat(client).status_code == 200
    assert stats(client)["by_fault"] == {"0:drop": 1}


def test_latency_composes_with_a_status_fault(fake):
    client = fake(
        {
            "latency_ms": 50,
            "faults": [
                {"kind": "latency", "ms": 100, "jitter_ms": 20},
                {"kind": "status", "code": 503},
                {"kind": "status", "code": 429},  # never reached: the first one decides
            ],
        }
    )
    started = time.monotonic()
    assert chat(client).status_code == 503
    assert 0.15 <= time.monotonic() - started < 1
    assert stats(client)["by_fault"] == {"0:latency": 1, "1:status": 1}


def test_many_requests_wait_concurrently(fake):
    client = fake({"latency_ms": 300})
    codes: list[int] = []
    threads = [
        threading.Thread(target=lambda: codes.append(chat(client).status_code)) for _ in range(8)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 8 and time.monotonic() - started < 1.5
    assert stats(client)["max_in_flight"] == 8


# --- stats, reset, admin ----------------------------------------------------------------------


def test_stats_count_models_statuses_faults_and_steps(fake):
    client = fake({"faults": [{"kind": "status", "code": 429, "match": {"model": "b"}}]})
    chat(client, model="a", headers={"X-Legato-Step": "summary"})
    chat(client, model="a", headers={"X-Legato-Step": "summary"}, stream=True)
    chat(client, model="b", headers={"X-Legato-Step": "headline"}, stream=True)
    chat(client, model="a")
    client.get("/models")
    admin(client, "GET", "/health")
    counted = stats(client)
    assert sum(counted.pop("by_second").values()) == 4  # per wall-clock second
    assert counted == {
        "requests": 4,
        "by_model": {"a": 3, "b": 1},
        "by_status": {"200": 3, "429": 1},
        "by_fault": {"0:status": 1},
        "by_step": {"summary": 2, "headline": 1},
        "by_step_ok": {"summary": 2},  # the headline call got the 429, not an answer
        "streamed_by_step": {"summary": 1},  # answers sent as a stream
        "in_flight": 0,
        "max_in_flight": 1,
    }


def test_reset_clears_counters_and_fault_usage(fake):
    client = fake({"faults": [{"kind": "status", "code": 500, "times": 1}]})
    assert [chat(client).status_code for _ in range(2)] == [500, 200]
    assert admin(client, "POST", "/_fake/reset").status_code == 200
    assert stats(client)["requests"] == 0 and stats(client)["by_status"] == {}
    assert chat(client).status_code == 500  # the fault's `times` starts over


def test_put_script_replaces_the_script(fake):
    client = fake({"rules": [{"match": {}, "reply": "old"}]})
    assert content(chat(client)) == "old"
    new = {
        "rules": [{"match": {}, "reply": "new"}],
        "faults": [{"kind": "status", "code": 418, "times": 1}],
    }
    assert admin(client, "PUT", "/_fake/script", json=new).json()["faults"] == 1
    assert chat(client).status_code == 418
    assert content(chat(client)) == "new"
    bad = admin(client, "PUT", "/_fake/script", json={"faults": [{"kind": "explode"}]})
    assert bad.status_code == 400 and "faults[0].kind" in bad.json()["error"]["message"]
    assert content(chat(client)) == "new"  # a bad script leaves the old one in place


def test_models_health_and_errors(fake):
    client = fake({"models": ["small"], "rules": [{"match": {"model": "big"}, "reply": "x"}]})
    ids = [m["id"] for m in client.get("/models").json()["data"]]
    assert ids == ["small", "fake-model", "big"]
    assert admin(client, "GET", "/health").json() == {"status": "ok"}
    assert client.get("/nope").status_code == 404
    assert client.get("/chat/completions").status_code == 405
    bad = client.post("/chat/completions", content=b"{not json")
    assert bad.status_code == 400 and "error" in bad.json()
    assert client.post("/chat/completions", json={"model": "m"}).status_code == 400
    remote = schema_format({"$ref": "https://example.com/schema.json"})
    unsupported = chat(client, response_format=remote)
    assert unsupported.status_code == 400 and "local $ref" in unsupported.json()["error"]["message"]


def test_keep_alive_and_pipelining_on_one_socket(fake):
    client = fake()
    port = int(str(client.base_url).rsplit(":", 1)[1].split("/")[0])
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request * 2 + request.replace(b"Host: x", b"Connection: close"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 3 and data.count(b"[fake:m] hi") == 3
    assert data.count(b"Connection: close") == 1


# --- scripts, API and command line ------------------------------------------------------------


def test_load_script_yaml_and_json(tmp_path):
    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text(
        "rules:\n  - match: {contains: hi}\n    reply: {a: 1}\n"
        "faults:\n  - {kind: latency, ms: 5}\n"
    )
    assert load_script(yaml_file)["rules"][0]["reply"] == {"a": 1}
    json_file = tmp_path / "s.json"
    json_file.write_text(json.dumps({"faults": [{"kind": "drop", "times": 1}]}))
    assert load_script(json_file) == {"faults": [{"kind": "drop", "times": 1}]}
    with pytest.raises(ValueError, match="must be a .yaml"):
        load_script(tmp_path / "s.txt")


@pytest.mark.parametrize(
    ("script", "field"),
    [
        ({"faults": [{"kind": "status", "code": 200}]}, r"faults\[0\]\.code"),
        ({"faults": [{"kind": "latency", "code": 500}]}, r"faults\[0\]: unknown key 'code'"),
        ({"faults": [{"kind": "hang", "times": -1}]}, r"faults\[0\]\.times"),
        ({"rules": [{"match": {"contains": 3}, "reply": "x"}]}, r"rules\[0\]\.match\.contains"),
        ({"rules": [{"match": {}}]}, r"rules\[0\]: needs 'reply' or 'tool_calls'"),
        (
            {"rules": [{"reply": "x", "tool_calls": [{"arguments": {}}]}]},
            r"rules\[0\]\.tool_calls\[0\]\.name",
        ),
        ({"latency_ms": "slow"}, "latency_ms"),
        ({"rule": []}, "unknown key 'rule'"),
    ],
)
def test_validation_names_the_bad_field(script, field):
    with pytest.raises(ValueError, match=field):
        validate_script(script)
    with pytest.raises(ValueError, match=field):
        FakeModelServer(script)


def test_command_line_prints_the_real_port_and_stops_on_sigterm(tmp_path):
    script = tmp_path / "f.yaml"
    script.write_text("rules:\n  - {match: {contains: ping}, reply: pong}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "legato.local.fake_model", "--port", "0", "--script", str(script)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("fake-model listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        assert url.endswith("/v1") and not url.endswith(":0/v1")
        with httpx.Client(base_url=url) as client:
            assert content(chat(client, "ping")) == "pong"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
