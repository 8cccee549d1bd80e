"""The parts of a Chat Completions request the fake server looks at, parsed once per request."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

SYSTEM_ROLES = ("system", "developer")


@dataclass(frozen=True)
class ChatRequest:
    model: str
    texts: tuple[tuple[str, str], ...]  # (role, text) per message, in order
    last_user: str
    system: str
    response_format: dict[str, Any] | None
    digest: str  # sha256 of the canonical request body: same request, same digest
    messages_digest: str  # sha256 of the canonical messages only
    prompt_chars: int
    stream: bool = False  # "stream": true: answer as server-sent events
    include_usage: bool = False  # stream_options.include_usage: a last event with the usage


def _canonical(value: Any) -> bytes:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode()


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    raise ValueError("messages[].content: expected a string, a list of parts or null")


def parse_chat(body: bytes) -> ChatRequest:
    """Parse and check a request body; raises ValueError with an OpenAI-like message."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("'model' is required and must be a non-empty string")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' is required and must be a non-empty array")
    texts: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"messages[{i}]: expected an object with a string 'role'")
        texts.append((message["role"], _text_of(message.get("content"))))
    response_format = data.get("response_format")
    if response_format is not None and not isinstance(response_format, dict):
        raise ValueError("'response_format' must be an object")
    options = data.get("stream_options")
    users = [text for role, text in texts if role == "user"]
    return ChatRequest(
        model=model,
        texts=tuple(texts),
        last_user=users[-1] if users else "",
        system="\n".join(text for role, text in texts if role in SYSTEM_ROLES),
        response_format=response_format,
        digest=hashlib.sha256(_canonical(data)).hexdigest(),
        messages_digest=hashlib.sha256(_canonical(messages)).hexdigest(),
        prompt_chars=sum(len(text) for _, text in texts),
        stream=data.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
    )
