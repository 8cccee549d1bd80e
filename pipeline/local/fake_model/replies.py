"""Deterministic Chat Completions replies: scripted, derived from a schema, or echoed text."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from legato.local.fake_model.prompt import ChatRequest
from legato.local.fake_model.schema_gen import instance
from legato.local.fake_model.script import Rule, Script

TEXT_LIMIT = 200


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def find_rule(script: Script, req: ChatRequest) -> Rule | None:
    return next((rule for rule in script.rules if rule.match.matches(req)), None)


def derived_content(req: ChatRequest) -> str:
    """The reply when no rule matches: a schema instance, `{"answer": ...}`, or echoed text."""
    text = f"[fake:{req.model}] {req.last_user}"[:TEXT_LIMIT]
    fmt = req.response_format or {}
    kind = fmt.get("type")
    if kind == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            return _dumps(instance(schema, req.messages_digest, req.last_user))
        return _dumps({"answer": text})
    if kind == "json_object":  # llama.cpp's server takes a schema here too
        schema = fmt.get("schema")
        if isinstance(schema, dict):
            return _dumps(instance(schema, req.messages_digest, req.last_user))
        return _dumps({"answer": text})
    return text


def message_for(req: ChatRequest, script: Script) -> tuple[dict[str, Any], str]:
    """The assistant message and the finish reason."""
    rule = find_rule(script, req)
    if rule is None:
        return {"role": "assistant", "content": derived_content(req)}, "stop"
    reply = rule.reply
    content = reply if isinstance(reply, str) or reply is None else _dumps(reply)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if not rule.tool_calls:
        return message, "stop"
    message["tool_calls"] = [
        {
            "id": "call_" + hashlib.sha256(f"{req.digest}:{i}".encode()).hexdigest()[:24],
            "type": "function",
            "function": {"name": call.name, "arguments": _dumps(call.arguments)},
        }
        for i, call in enumerate(rule.tool_calls)
    ]
    return message, "tool_calls"


def break_json(content: str | None) -> str:
    """Content that fails json.loads: a JSON document cut in half, or an unclosed object."""
    text = content or ""
    try:
        json.loads(text)
        is_container = text.lstrip()[:1] in ("{", "[")
    except ValueError:
        is_container = False
    if is_container:
        return text.rstrip()[: max(1, len(text.rstrip()) // 2)]
    return '{"answer": ' + json.dumps(text, ensure_ascii=False)[:-1]


def completion(req: ChatRequest, script: Script, *, malformed: bool = False) -> dict[str, Any]:
    """A full `chat.completion` object; identical for identical requests."""
    message, finish = message_for(req, script)
    if malformed:
        message = {"role": "assistant", "content": break_json(message["content"])}
        finish = "stop"
    out_chars = len(message["content"] or "") + sum(
        len(c["function"]["arguments"]) + len(c["function"]["name"])
        for c in message.get("tool_calls", [])
    )
    prompt_tokens, completion_tokens = max(1, req.prompt_chars // 4), max(1, out_chars // 4)
    return {
        "id": "chatcmpl-" + req.digest[:24],
        "object": "chat.completion",
        "created": 0,
        "model": req.model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


_ERRORS = {
    400: (
        "invalid_request_error",
        "This model's maximum context length is 8192 tokens. However, "
        "your messages resulted in more tokens. Please reduce the length of the messages.",
    ),
    401: ("invalid_request_error", "Incorrect API key provided (fake)."),
    404: ("invalid_request_error", "Not found (fake)."),
    429: ("requests", "Rate limit reached for requests (fake). Please try again later."),
    500: ("server_error", "The server had an error while processing your request (fake)."),
}


def error_body(code: int, message: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""
    kind, default = _ERRORS.get(code) or _ERRORS[500 if code >= 500 else 404]
    if code not in _ERRORS and code < 500:
        default = f"Request failed with status {code} (fake)."
    text = message if message is not None else default
    err_code: str | None = None
    if code == 429:
        err_code = "rate_limit_exceeded"
    elif code == 401:
        err_code = "invalid_api_key"
    elif code == 400 and "context length" in text.lower():
        err_code = "context_length_exceeded"
    return {"error": {"message": text, "type": kind, "param": None, "code": err_code}}
