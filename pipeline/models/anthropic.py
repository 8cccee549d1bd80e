"""The Anthropic Messages API, behind the same interface as `openai_compat.post`.

A provider is data: `base_url` (e.g. https://api.anthropic.com/v1), `api_key_env` (sent as
`x-api-key`), `headers` (`anthropic-version` defaults to 2023-06-01). Chat messages are translated:
system messages go to the top-level `system`, `max_tokens` is always sent (the API requires it),
and a schema is asked for through a forced tool whose input is the answer. Errors map to the same
types as the OpenAI protocol (429/5xx/529 transient, other 4xx permanent).
"""

from __future__ import annotations

import json
import os
from typing import Any

from legato.envelope import Messages, ToolCall, Usage, as_messages
from legato.errors import TransientError
from legato.models.config import ModelConfig
from legato.models.openai_compat import Completion
from legato.models.transport import Client
from legato.models.wire import send

VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
ANSWER_TOOL = "answer"
RESET_HEADERS = ("retry-after", "anthropic-ratelimit-requests-reset")
_DROPPED = {"seed", "response_format", "frequency_penalty", "presence_penalty", "n"}


def headers(cfg: ModelConfig, step_tag: str | None) -> dict[str, str]:
    out = {"anthropic-version": VERSION, **cfg.headers}
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    if key:
        out["x-api-key"] = key
    if step_tag:
        out["X-Legato-Step"] = step_tag
    return out


def request_body(cfg: ModelConfig, messages: Messages, *,
                 schema: dict[str, Any] | None = None,
                 params: dict[str, Any] | None = None) -> dict[str, Any]:
    checked = as_messages(messages)
    system = "\n\n".join(str(m.content) for m in checked if m.role in ("system", "developer"))
    turns = [{"role": m.role, "content": m.content}
             for m in checked if m.role in ("user", "assistant")]
    body: dict[str, Any] = {"model": cfg.model, "messages": turns, "temperature": 0,
                            "max_tokens": DEFAULT_MAX_TOKENS}
    merged = {**cfg.params, **(params or {})}
    if "max_completion_tokens" in merged:
        merged.setdefault("max_tokens", merged.pop("max_completion_tokens"))
    body.update({k: v for k, v in merged.items() if k not in _DROPPED})
    if system:
        body["system"] = system
    if schema is not None:
        body["tools"] = [{"name": ANSWER_TOOL, "description": "Give the answer.",
                          "input_schema": schema}]
        body["tool_choice"] = {"type": "tool", "name": ANSWER_TOOL}
    return body


def parse(data: dict[str, Any]) -> Completion:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in data["content"]:
        if block.get("type") == "text":
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            calls.append(ToolCall(id=block.get("id"), name=block["name"],
                                  arguments=block.get("input") or {}))
    answer = next((c for c in calls if c.name == ANSWER_TOOL), None)
    text = json.dumps(answer.arguments) if answer is not None else "".join(texts)
    usage = data.get("usage") or {}
    return Completion(
        text=text,
        usage=Usage(prompt_tokens=int(usage.get("input_tokens", 0)),
                    completion_tokens=int(usage.get("output_tokens", 0)), calls=1),
        finish_reason=data.get("stop_reason"),
        tool_calls=tuple(c for c in calls if c.name != ANSWER_TOOL),
    )


def post(client: Client, cfg: ModelConfig, messages: Messages, *,
         schema: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
         step_tag: str | None = None) -> Completion:
    """One request to `<base_url>/messages`, no retry. Raises StepError subclasses."""
    url = cfg.base_url.rstrip("/") + "/messages"
    body = request_body(cfg, messages, schema=schema, params=params)
    data = send(client, cfg, url, body, headers(cfg, step_tag), reset_headers=RESET_HEADERS)
    try:
        return parse(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TransientError(f"malformed response from {cfg.model}: {exc!r}") from exc
