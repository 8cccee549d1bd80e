"""The Anthropic Messages API, behind the same interface as `openai_compat.post`.

A provider is data: `base_url` (e.g. https://api.anthropic.com/v1), `api_key_env` (sent as
`x-api-key`), `headers` (`anthropic-version` defaults to 2023-06-01). Chat messages are translated:
system messages go to the top-level `system`, `max_tokens` is always sent (the API requires it),
and a schema is asked for through a forced tool whose input is the answer. Errors map to the same
types as the OpenAI protocol (429/5xx/529 transient, other 4xx permanent).

With `on_delta`, the answer is streamed (`stream: true`: message_start, content_block_start /
_delta / _stop, message_delta, message_stop): text deltas — or, for a schema, the `answer` tool's
`input_json_delta` pieces, which are the answer — go to `on_delta` (one call a network read),
and the Completion's text is those pieces joined. An `error` event, a cut stream or one without
`message_stop` is a TransientError.
"""

from __future__ import annotations

import json
import os
from typing import Any

from legato.envelope import Messages, ToolCall, Usage, as_messages
from legato.errors import TransientError
from legato.models.config import ModelConfig
from legato.models.openai_compat import Completion, OnDelta
from legato.models.sse import SseDecoder, data_json
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
         step_tag: str | None = None, on_delta: OnDelta | None = None) -> Completion:
    """One request to `<base_url>/messages`, no retry (streamed with `on_delta`). Raises
    StepError subclasses."""
    url = cfg.base_url.rstrip("/") + "/messages"
    body = request_body(cfg, messages, schema=schema, params=params)
    if on_delta is not None:
        body["stream"] = True
        streamed = _Streamed(cfg, on_delta, answer_tool=schema is not None)
        send(client, cfg, url, body, headers(cfg, step_tag), reset_headers=RESET_HEADERS,
             on_chunk=streamed.feed)
        return streamed.completion()
    data = send(client, cfg, url, body, headers(cfg, step_tag), reset_headers=RESET_HEADERS)
    try:
        return parse(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TransientError(f"malformed response from {cfg.model}: {exc!r}") from exc


class _Streamed:
    """A streamed Messages answer put together from its events."""

    def __init__(self, cfg: ModelConfig, on_delta: OnDelta, *, answer_tool: bool) -> None:
        self.cfg, self.on_delta, self.answer_tool = cfg, on_delta, answer_tool
        self.sse = SseDecoder()
        self.blocks: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, int] = {}
        self.stop_reason: str | None = None
        self.done = False
        self.fresh: list[str] = []

    def feed(self, piece: bytes) -> None:
        self.fresh = []  # this piece's answer: one delta a network read
        try:
            for _, data in self.sse.feed(piece):
                try:
                    self._event(data_json(data))
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise TransientError(f"malformed response from {self.cfg.model}: "
                                         f"{exc!r}") from exc
        finally:  # what arrived before a broken event is published too (then aborted)
            if self.fresh:
                self.on_delta("".join(self.fresh))

    def _event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "error":
            error = event.get("error") or {}
            raise TransientError(f"stream error from {self.cfg.model}: "
                                 f"{error.get('type')}: {error.get('message')}")
        if kind == "message_start":
            self.usage.update(event["message"].get("usage") or {})
        elif kind == "content_block_start":
            block = dict(event["content_block"])
            block["parts"] = []
            self.blocks[int(event["index"])] = block
        elif kind == "content_block_delta":
            block, delta = self.blocks[int(event["index"])], event["delta"]
            piece = delta.get("text") if delta["type"] == "text_delta" else \
                delta.get("partial_json") if delta["type"] == "input_json_delta" else None
            if piece:
                block["parts"].append(piece)
                if self._is_answer(block):
                    self.fresh.append(piece)
        elif kind == "message_delta":
            self.stop_reason = (event.get("delta") or {}).get("stop_reason") or self.stop_reason
            self.usage.update(event.get("usage") or {})
        elif kind == "message_stop":
            self.done = True

    def _is_answer(self, block: dict[str, Any]) -> bool:
        """Whether a block's pieces are the answer a watcher sees (and the Completion's text)."""
        if self.answer_tool:
            return block.get("type") == "tool_use" and block.get("name") == ANSWER_TOOL
        return block.get("type") == "text"

    def completion(self) -> Completion:
        if not self.done:
            raise TransientError(f"model stream from {self.cfg.model} ended before its end")
        texts: list[str] = []
        calls: list[ToolCall] = []
        try:
            for _, block in sorted(self.blocks.items()):
                joined = "".join(block["parts"])
                if self._is_answer(block):
                    texts.append(joined)
                elif block.get("type") == "tool_use":
                    calls.append(ToolCall(id=block.get("id"), name=block["name"],
                                          arguments=json.loads(joined or "{}")))
        except ValueError as exc:
            raise TransientError(f"malformed response from {self.cfg.model}: {exc!r}") from exc
        return Completion(
            text="".join(texts),
            usage=Usage(prompt_tokens=int(self.usage.get("input_tokens", 0)),
                        completion_tokens=int(self.usage.get("output_tokens", 0)), calls=1),
            finish_reason=self.stop_reason, tool_calls=tuple(calls))
