"""Server-sent events out of byte pieces as they arrive (the streamed answers of both wires).

`SseDecoder.feed(piece)` returns the events the piece completed, as (event name, data): a line
is decoded only once whole, so a character split across pieces reads right. Comments (`:`) and
fields other than `event` and `data` are skipped; several `data` lines join with newlines.
`data_json(data)` is `json.loads(data)` for an event's data, without its per-call wrappers.
"""

from __future__ import annotations

import json
from typing import Any

# The default decoder's C scanner: json.loads' wrappers cost as much as its parse of a small
# event (and a streamed answer is dozens of them).
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_JSON_SPACE = " \t\n\r"


def data_json(data: str) -> Any:
    """The JSON value that is an event's whole data; json.JSONDecodeError if it is none."""
    text = data.strip(_JSON_SPACE)
    try:
        value, end = _scan(text, 0)
    except StopIteration as exc:
        raise json.JSONDecodeError("Expecting value", text, exc.value) from None
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


class SseDecoder:
    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, piece: bytes) -> list[tuple[str, str]]:
        # Split the piece once (not a slice of the buffer per line: a fast server's answer
        # arrives as one piece of dozens of events).
        lines = (self._buffer + piece).split(b"\n")
        self._buffer = lines.pop()  # the unfinished last line (b"" after a newline)
        out: list[tuple[str, str]] = []
        for raw in lines:
            line = raw.rstrip(b"\r")
            if not line:  # a blank line ends the event
                if self._data:
                    out.append((self._event or "message", "\n".join(self._data)))
                self._event, self._data = "", []
                continue
            name, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if name == b"data":
                self._data.append(value.decode("utf-8", errors="replace"))
            elif name == b"event":
                self._event = value.decode("utf-8", errors="replace")
        return out
