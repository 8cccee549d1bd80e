"""A completion as OpenAI's streamed form: `chat.completion.chunk` server-sent events.

The first event says the role, each next one carries `chunk_chars` characters of the content
(a tool call comes as its name, then its arguments in two halves), the last one the finish
reason; then, when asked (`stream_options.include_usage`), an event with the usage and no
choices; then `data: [DONE]`. Faults cut the stream after N events (`stream_drop`), break one
event's JSON (`stream_malformed`) or slow every event (`stream_slow`).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Streamed:
    """A streamed 200 answer for the connection loop to write, with its faults."""

    events: list[bytes]  # each one whole `data: ...\n\n` event
    event_delay_s: float = 0.0
    cut_after: int | None = None  # close the connection after this many events


# One encoder, made once: `json.dumps` with options builds a new one per call.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _event(payload: Any) -> bytes:
    return b"data: " + _dumps(payload).encode() + b"\n\n"


def events(completion: dict[str, Any], *, chunk_chars: int, include_usage: bool) -> list[bytes]:
    """The SSE events of a full `chat.completion` object, in order, `[DONE]` last."""
    choice = completion["choices"][0]
    message = choice["message"]
    head = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint")}
    head["object"] = "chat.completion.chunk"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _event({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                            "finish_reason": finish}]})

    # The content events differ only in their delta: the rest is dumped once, not per event
    # (this server shares the machine with what it measures).
    marker = "\x00delta\x00"
    before, after = chunk(marker).split(json.dumps(marker).encode(), 1)  # type: ignore[arg-type]
    out = [before + b'{"role":"assistant","content":""}' + after]
    content = message.get("content") or ""
    for i in range(0, len(content), chunk_chars):
        out.append(before + b'{"content":' + _dumps(content[i:i + chunk_chars]).encode()
                   + b"}" + after)
    for n, call in enumerate(message.get("tool_calls") or []):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        out.append(chunk({"tool_calls": [{"index": n, "id": call["id"], "type": "function",
                                          "function": {"name": call["function"]["name"],
                                                       "arguments": arguments[:half]}}]}))
        out.append(chunk({"tool_calls": [{"index": n, "function": {
            "arguments": arguments[half:]}}]}))
    out.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        out.append(_event({**head, "choices": [], "usage": completion["usage"]}))
    out.append(DONE)
    return out


def malformed(events: list[bytes], at: int) -> list[bytes]:
    """`events` with event number `at` (0-based, capped to the last) cut to broken JSON."""
    i = min(at, len(events) - 1)
    broken = list(events)
    broken[i] = events[i][: max(8, len(events[i]) // 2)].rstrip(b"\n") + b"\n\n"
    return broken


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
               b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n")


async def write(writer: asyncio.StreamWriter, streamed: Streamed, *, keep_alive: bool) -> bool:
    """Write the answer as HTTP chunks, one event each; False if the connection was cut.
    Paced (`stream_slow`), each event is sent on its own; else all in one write, the body's
    last chunk too (one send, as an answer that is ready at once would come, not a packet an
    event, nor a packet for the end that wakes the client's loop once more)."""
    head = STREAM_HEAD + (b"\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    cut = streamed.cut_after
    sent = streamed.events if cut is None else streamed.events[:cut]
    if streamed.event_delay_s > 0:
        writer.write(head)
        for event in sent:
            await asyncio.sleep(streamed.event_delay_s)
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
    else:
        writer.write(head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in sent)
                     + (b"0\r\n\r\n" if cut is None else b""))  # whole, its end too: one send
        if cut is None:
            await writer.drain()
            return True
    if cut is not None and cut < len(streamed.events):
        await writer.drain()  # what was sent before the cut reaches the client
        writer.transport.abort()
        return False
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True
