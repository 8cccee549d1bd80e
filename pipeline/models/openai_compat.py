"""The OpenAI Chat Completions wire protocol over httpx, for any compatible server.

`post` is one request: errors are mapped to Legato's types (429/5xx/timeouts are transient, other
4xx permanent; a context-length 400 says so). `chat` is `post` under `retry.MODEL_CALL`; the
gateway (gateway.py) runs `post` under its own per-model policy instead. Keys are read from the
environment of the process making the call, never from messages.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import httpx

from pipeline.envelope import Usage
from pipeline.errors import PermanentError, TransientError
from pipeline.models.retry import MODEL_CALL
from pipeline.spec import ModelConfig


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage
    finish_reason: str | None = None
    tool_calls: tuple[dict[str, Any], ...] = ()


def _headers(cfg: ModelConfig, step_tag: str | None) -> dict[str, str]:
    headers = dict(cfg.headers)
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if step_tag:
        headers["X-Legato-Step"] = step_tag
    return headers


def _timeout(cfg: ModelConfig) -> float | httpx._client.UseClientDefault:
    """The model's own timeout, else the client's (LEGATO_HTTP_TIMEOUT); never None, which
    would mean no timeout at all."""
    return cfg.timeout if cfg.timeout else httpx.USE_CLIENT_DEFAULT


def _retry_after(response: httpx.Response) -> float | None:
    for name in ("retry-after", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        value = response.headers.get(name)
        if value:
            try:
                return float(value.rstrip("s"))
            except ValueError:
                continue
    return None


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("error", {}).get("message") or body)
    except ValueError:
        return response.text[:300]


def request_body(
    cfg: ModelConfig,
    messages: list[dict[str, Any]],
    *,
    schema: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    # Deterministic by default: temperature 0 and a fixed seed, unless the config or step says so.
    body: dict[str, Any] = {"model": cfg.model, "messages": messages, "temperature": 0, "seed": 0}
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
        body["messages"] = [stated, *messages]
        body["response_format"] = {"type": "json_object", "schema": schema}
    return body


_CONTEXT_HINTS = ("context length", "context_length", "maximum context", "too many tokens",
                  "prompt is too long", "context window")


def permanent(status: int, model: str, message: str) -> PermanentError:
    """A non-retryable 4xx; a context-length refusal is named as such."""
    if any(h in message.lower() for h in _CONTEXT_HINTS):
        return PermanentError(f"context too long for {model} (HTTP {status}): {message}",
                              status_code=status)
    return PermanentError(f"HTTP {status} from {model}: {message}", status_code=status)


def post(client: httpx.Client, cfg: ModelConfig, messages: list[dict[str, Any]], *,
         schema: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
         step_tag: str | None = None) -> Completion:
    """One request, no retry. Raises StepError subclasses."""
    body = request_body(cfg, messages, schema=schema, params=params)
    return _post_once(client, cfg, body, _headers(cfg, step_tag))


def _post_once(client: httpx.Client, cfg: ModelConfig, body: dict[str, Any],
               headers: dict[str, str]) -> Completion:
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    try:
        response = client.post(url, json=body, headers=headers, timeout=_timeout(cfg))
    except httpx.TimeoutException as exc:
        raise TransientError(f"model call timed out: {type(exc).__name__}") from exc
    except httpx.TransportError as exc:
        raise TransientError(f"model server unreachable: {exc!r}") from exc
    status = response.status_code
    if status in (408, 429) or status >= 500:
        raise TransientError(
            f"HTTP {status} from {cfg.model}: {_error_message(response)}",
            status_code=status, retry_after=_retry_after(response),
        )
    if status >= 400:
        raise permanent(status, cfg.model, _error_message(response))
    try:
        data = response.json()
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        calls = tuple({"id": c.get("id"), "name": c["function"]["name"],
                       "arguments": json.loads(c["function"].get("arguments") or "{}")}
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
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise TransientError(f"malformed response from {cfg.model}: {exc!r}") from exc


def chat(
    client: httpx.Client,
    cfg: ModelConfig,
    messages: list[dict[str, Any]],
    *,
    schema: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    step_tag: str | None = None,
) -> Completion:
    """One chat completion, retried on transient failures. Raises StepError subclasses."""
    body = request_body(cfg, messages, schema=schema, params=params)
    headers = _headers(cfg, step_tag)
    return MODEL_CALL(_post_once, client, cfg, body, headers)
