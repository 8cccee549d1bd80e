"""The OpenAI Chat Completions wire protocol, for any compatible server.

`post` is one request: errors are mapped to Legato's types by `wire.send` (429/5xx/timeouts are
transient, other 4xx permanent; a context-length 400 says so). `chat` is `post` under
`retry.MODEL_CALL`; the gateway (gateway.py) runs `post` under its own per-model policy instead.
Keys are read from the environment of the process making the call, never from messages.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from legato.envelope import Messages, ToolCall, Usage, as_messages
from legato.errors import TransientError
from legato.models.config import ModelConfig
from legato.models.retry import MODEL_CALL
from legato.models.transport import Client
from legato.models.wire import send

# Where OpenAI-compatible servers say when to try again.
RESET_HEADERS = ("retry-after", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


def _headers(cfg: ModelConfig, step_tag: str | None) -> dict[str, str]:
    headers = dict(cfg.headers)
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if step_tag:
        headers["X-Legato-Step"] = step_tag
    return headers


def request_body(
    cfg: ModelConfig,
    messages: Messages,
    *,
    schema: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    # Deterministic by default: temperature 0 and a fixed seed, unless the config or step says so.
    wire = [m.wire() for m in as_messages(messages)]
    body: dict[str, Any] = {"model": cfg.model, "messages": wire, "temperature": 0, "seed": 0}
    body.update(cfg.params)
    body.update(params or {})
    if schema is not None and cfg.structured_output == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": True},
        }
    elif schema is not None:
        stated = {"role": "system", "content": "Reply with only a JSON value matching this "
                  f"JSON schema: {json.dumps(schema, separators=(',', ':'))}"}
        body["messages"] = [stated, *body["messages"]]
        body["response_format"] = {"type": "json_object", "schema": schema}
    return body


def post(client: Client, cfg: ModelConfig, messages: Messages, *,
         schema: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
         step_tag: str | None = None) -> Completion:
    """One request, no retry. Raises StepError subclasses."""
    body = request_body(cfg, messages, schema=schema, params=params)
    return _post_once(client, cfg, body, _headers(cfg, step_tag))


def _post_once(client: Client, cfg: ModelConfig, body: dict[str, Any],
               headers: dict[str, str]) -> Completion:
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    data = send(client, cfg, url, body, headers, reset_headers=RESET_HEADERS)
    try:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        calls = tuple(ToolCall(id=c.get("id"), name=c["function"]["name"],
                               arguments=json.loads(c["function"].get("arguments") or "{}"))
                      for c in choice["message"].get("tool_calls") or [])
        return Completion(
            tool_calls=calls,
            text=choice["message"].get("content") or "",
            usage=Usage(
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                calls=1,
            ),
            finish_reason=choice.get("finish_reason"),
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise TransientError(f"malformed response from {cfg.model}: {exc!r}") from exc


def chat(
    client: Client,
    cfg: ModelConfig,
    messages: Messages,
    *,
    schema: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    step_tag: str | None = None,
) -> Completion:
    """One chat completion, retried on transient failures. Raises StepError subclasses."""
    body = request_body(cfg, messages, schema=schema, params=params)
    headers = _headers(cfg, step_tag)
    return MODEL_CALL(_post_once, client, cfg, body, headers)
