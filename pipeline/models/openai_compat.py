"""The OpenAI Chat Completions wire protocol, for any compatible server.

`post` is one request: errors are mapped to Legato's types by `wire.send` (429/5xx/timeouts are
transient, other 4xx permanent; a context-length 400 says so). `chat` is `post` under
`retry.MODEL_CALL`; the gateway (gateway.py) runs `post` under its own per-model policy instead.
Keys are read from the environment of the process making the call, never from messages.

With `on_delta`, the answer is streamed (`stream: true`, `stream_options.include_usage`): the
content each network read brings goes to `on_delta` as it arrives (one call a read, however many
events it holds), and the Completion is the pieces joined —
exactly what was handed out (a server that sends no usage is charged a completion token per
content chunk; one that ignores `stream: true` and answers with one JSON body is read whole, its
text handed out at once). A stream that is cut off, ends before its finish, or carries an event
that is not JSON is a TransientError, retried like any other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from legato.envelope import Messages, ToolCall, Usage, as_messages
from legato.errors import TransientError
from legato.models.config import ModelConfig
from legato.models.retry import MODEL_CALL
from legato.models.sse import SseDecoder, data_json
from legato.models.transport import Client
from legato.models.wire import send

OnDelta = Callable[[str], None]

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
         step_tag: str | None = None, on_delta: OnDelta | None = None) -> Completion:
    """One request, no retry (streamed with `on_delta`). Raises StepError subclasses."""
    body = request_body(cfg, messages, schema=schema, params=params)
    if on_delta is not None:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        return _stream_once(client, cfg, body, _headers(cfg, step_tag), on_delta)
    return _post_once(client, cfg, body, _headers(cfg, step_tag))


def _malformed(cfg: ModelConfig, exc: BaseException) -> TransientError:
    return TransientError(f"malformed response from {cfg.model}: {exc!r}")


def _post_once(client: Client, cfg: ModelConfig, body: dict[str, Any],
               headers: dict[str, str]) -> Completion:
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    return _completion_of(cfg, send(client, cfg, url, body, headers, reset_headers=RESET_HEADERS))


def _completion_of(cfg: ModelConfig, data: Any) -> Completion:
    """A whole (not streamed) `chat.completion` answer."""
    try:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        calls = tuple(ToolCall(id=c.get("id"), name=c["function"]["name"],
                               arguments=json.loads(c["function"].get("arguments") or "{}"))
                      for c in choice["message"].get("tool_calls") or [])
        return Completion(
            tool_calls=calls,
            text=choice["message"].get("content") or "",
            usage=_usage(usage),
            finish_reason=choice.get("finish_reason"),
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise _malformed(cfg, exc) from exc


def _usage(usage: dict[str, Any]) -> Usage:
    return Usage(prompt_tokens=int(usage.get("prompt_tokens", 0)),
                 completion_tokens=int(usage.get("completion_tokens", 0)), calls=1)


class _Streamed:
    """A streamed answer put together from its `chat.completion.chunk` events."""

    def __init__(self, cfg: ModelConfig, on_delta: OnDelta) -> None:
        self.cfg, self.on_delta = cfg, on_delta
        self.sse = SseDecoder()
        self.text: list[str] = []
        self.calls: dict[int, dict[str, str]] = {}
        self.usage: dict[str, Any] = {}
        self.finish: str | None = None
        self.done = False
        self.events = 0
        self.fresh: list[str] = []
        self.unstreamed = bytearray()  # the body, until an event shows it is a stream

    def feed(self, piece: bytes) -> None:
        if not self.events and len(self.unstreamed) < _MAX_UNSTREAMED:
            self.unstreamed += piece
        self.fresh = []  # this piece's content: one delta a network read, not one an event
        try:
            for _, data in self.sse.feed(piece):
                self.events += 1
                if data.strip() == "[DONE]":
                    self.done = True
                    continue
                try:
                    self._chunk(data_json(data))
                except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                    raise _malformed(self.cfg, exc) from exc
        finally:  # what arrived before a broken event is published too (then aborted)
            if self.fresh:
                self.on_delta("".join(self.fresh))

    def _chunk(self, chunk: dict[str, Any]) -> None:
        if chunk.get("error"):  # some servers report a failure inside the stream
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise TransientError(f"stream error from {self.cfg.model}: {message}")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                self.text.append(content)
                self.fresh.append(content)
            for fragment in delta.get("tool_calls") or []:
                call = self.calls.setdefault(int(fragment.get("index", 0)),
                                             {"id": "", "name": "", "arguments": ""})
                call["id"] = fragment.get("id") or call["id"]
                function = fragment.get("function") or {}
                call["name"] += function.get("name") or ""
                call["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]

    def completion(self) -> Completion:
        if not self.events and self.unstreamed:  # a server that ignored `stream: true`
            whole = self._whole()
            if whole is not None:
                if whole.text:
                    self.on_delta(whole.text)
                return whole
        if not self.done and self.finish is None:
            raise TransientError(f"model stream from {self.cfg.model} ended before its end")
        try:
            calls = tuple(ToolCall(id=c["id"] or None, name=c["name"],
                                   arguments=json.loads(c["arguments"] or "{}"))
                          for _, c in sorted(self.calls.items()))
        except ValueError as exc:
            raise _malformed(self.cfg, exc) from exc
        usage = _usage(self.usage)
        if not self.usage:  # a server that ignores include_usage (llama-cpp-python): its
            # chunks are a token each, so count them rather than charge nothing
            usage = usage.model_copy(update={"completion_tokens": len(self.text)})
        return Completion("".join(self.text), usage, self.finish, calls)


    def _whole(self) -> Completion | None:
        try:
            data = json.loads(bytes(self.unstreamed))
        except ValueError:
            return None
        return _completion_of(self.cfg, data) if isinstance(data, dict) and "choices" in data \
            else None


# Kept of a streamed body until its first event, to read it whole if it never streams.
_MAX_UNSTREAMED = 4 * 1024 * 1024


def _stream_once(client: Client, cfg: ModelConfig, body: dict[str, Any],
                 headers: dict[str, str], on_delta: OnDelta) -> Completion:
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    streamed = _Streamed(cfg, on_delta)
    send(client, cfg, url, body, headers, reset_headers=RESET_HEADERS, on_chunk=streamed.feed)
    return streamed.completion()


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
