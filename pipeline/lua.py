"""Lua script text made from Python constants, so a script never keeps its own copy of a list."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_PLAIN = re.compile(r"[A-Za-z0-9_ .:-]+")


def lua_set(name: str, values: Iterable[str]) -> str:
    """`local NAME = {['a'] = true, ...}`: a set the script tests with `NAME[x]`."""
    names = sorted(values)
    for value in names:
        if not _PLAIN.fullmatch(value):  # nothing here needs quoting beyond '...'
            raise ValueError(f"not a plain Lua string: {value!r}")
    items = ", ".join(f"['{v}'] = true" for v in names)
    return f"local {name} = {{{items}}}\n"


def one_trip(*parts: str) -> str:
    """One script that runs `parts` — each a script's text over KEYS and ARGV — in order, in one
    round trip (and atomically). Each part sees its own slice of KEYS and ARGV: the call's ARGV
    starts with each part's number of keys and of args (2 per part), then every part's args in
    order; KEYS are every part's keys in order. The reply is the list of the parts' replies."""
    n = len(parts)
    functions = "".join(f"local function part{i}(KEYS, ARGV)\n{text}\nend\n"
                        for i, text in enumerate(parts))
    calls = "".join(
        f"do\n  local nk, na = tonumber(ARGV[{2 * i + 1}]), tonumber(ARGV[{2 * i + 2}])\n"
        f"  local r = part{i}({{unpack(KEYS, k + 1, k + nk)}}, {{unpack(ARGV, a + 1, a + na)}})\n"
        f"  if r == nil or r == false then r = 0 end\n"
        f"  replies[{i + 1}] = r\n  k, a = k + nk, a + na\nend\n"
        for i in range(n))
    return functions + f"local replies = {{}}\nlocal k, a = 0, {2 * n}\n" + calls + \
        "return replies\n"


def one_trip_call(parts: list[tuple[list[Any], list[Any]]]) -> dict[str, list[Any]]:
    """The keys and args of a `one_trip` script's call from each part's (keys, args)."""
    keys: list[Any] = []
    sizes: list[Any] = []
    args: list[Any] = []
    for part_keys, part_args in parts:
        keys += part_keys
        args += part_args
        sizes += [len(part_keys), len(part_args)]
    return {"keys": keys, "args": sizes + args}


Part = tuple[str, list[Any], list[Any]]  # a named script's call: name, keys, args


class Trips:
    """Named scripts, several run in one round trip (`one_trip`): each combination of names is
    registered once, when first used."""

    def __init__(self, client: Any, scripts: dict[str, str]) -> None:
        self.redis = client
        self.scripts = dict(scripts)
        self._combined: dict[tuple[str, ...], Any] = {}

    def add(self, name: str, text: str) -> None:
        self.scripts[name] = text

    def __call__(self, parts: list[Part], *, client: Any = None) -> list[Any]:
        """Run `parts` in order in one call; their replies (with `client`, a pipeline: queued)."""
        names = tuple(name for name, _, _ in parts)
        script = self._combined.get(names)
        if script is None:
            script = self.redis.register_script(one_trip(*(self.scripts[n] for n in names)))
            self._combined[names] = script
        call = one_trip_call([(keys, args) for _, keys, args in parts])
        reply: list[Any] = script(keys=call["keys"], args=call["args"], client=client)
        return reply
