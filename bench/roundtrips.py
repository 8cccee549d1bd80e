"""Counting Redis round trips with MONITOR on the private server, per database.

MONITOR prints every command a client sends, and the commands a Lua script runs (tagged `lua`).
A round trip here is one client command, except that MULTI ... EXEC from one client is one (redis-py
sends a transaction in one write); commands inside Lua are counted apart, as `lua_calls`.
Non-transactional pipelines are counted per command, so this is an upper bound on round trips
for code that pipelines (kombu does, for acks).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_LINE = re.compile(r'^\d+\.\d+ \[(\d+) ([^\]]+)\] "([^"]+)"')


@dataclass
class Traffic:
    round_trips: int = 0
    commands: int = 0  # every client command, MULTI/EXEC bodies included
    lua_calls: int = 0
    by_command: Counter[str] = field(default_factory=Counter)


class Monitor:
    """`redis-cli MONITOR` into a file while the block runs; then `traffic(db, exclude)`."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log

    def __enter__(self) -> Monitor:
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in __exit__
        self._proc = subprocess.Popen(["redis-cli", "-p", str(self.port), "monitor"],
                                      stdout=self._out, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while self.log.stat().st_size == 0 and time.monotonic() < deadline:
            time.sleep(0.02)  # redis-cli prints OK once MONITOR is on
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)
        self._proc.terminate()
        self._proc.wait(5)
        self._out.close()

    def traffic(self, db: int, exclude: set[str]) -> Traffic:
        out = Traffic()
        in_multi: set[str] = set()
        with open(self.log, errors="replace") as f:
            for line in f:
                m = _LINE.match(line)
                if not m or int(m.group(1)) != db:
                    continue
                client, command = m.group(2), m.group(3).upper()
                if client in exclude:
                    continue
                if client == "lua":
                    out.lua_calls += 1
                    continue
                out.commands += 1
                out.by_command[command] += 1
                if command == "MULTI":
                    in_multi.add(client)
                    out.round_trips += 1
                elif command in ("EXEC", "DISCARD"):
                    in_multi.discard(client)
                elif client not in in_multi:
                    out.round_trips += 1
        return out
