"""Server-sent events out of byte pieces as they arrive (the streamed answers of both wires).

`SseDecoder.feed(piece)` returns the events the piece completed, as (event name, data): a line
is decoded only once whole, so a character split across pieces reads right. Comments (`:`) and
fields other than `event` and `data` are skipped; several `data` lines join with newlines.
"""

from __future__ import annotations


class SseDecoder:
    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, piece: bytes) -> list[tuple[str, str]]:
        self._buffer += piece
        out: list[tuple[str, str]] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return out
            line = self._buffer[:end].rstrip(b"\r")
            self._buffer = self._buffer[end + 1:]
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
