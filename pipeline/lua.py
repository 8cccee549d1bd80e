"""Lua script text made from Python constants, so a script never keeps its own copy of a list."""

from __future__ import annotations

import re
from collections.abc import Iterable

_PLAIN = re.compile(r"[A-Za-z0-9_ .:-]+")


def lua_set(name: str, values: Iterable[str]) -> str:
    """`local NAME = {['a'] = true, ...}`: a set the script tests with `NAME[x]`."""
    names = sorted(values)
    for value in names:
        if not _PLAIN.fullmatch(value):  # nothing here needs quoting beyond '...'
            raise ValueError(f"not a plain Lua string: {value!r}")
    items = ", ".join(f"['{v}'] = true" for v in names)
    return f"local {name} = {{{items}}}\n"
