"""The tool registry: `@tool` registers a typed function; its arguments are checked by pydantic."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pydantic import validate_call

F = TypeVar("F", bound=Callable[..., Any])

_TOOLS: dict[str, Callable[..., Any]] = {}


class ToolNotFound(KeyError):
    pass


def tool(fn: F | None = None, *, name: str | None = None) -> Any:
    """Register `fn` as a tool under `name` (default: the function's name)."""

    def register(f: F) -> F:
        _TOOLS[name or f.__name__] = validate_call(f)
        return f

    return register(fn) if fn is not None else register


def get_tool(name: str) -> Callable[..., Any]:
    try:
        return _TOOLS[name]
    except KeyError:
        raise ToolNotFound(f"unknown tool {name!r}; known: {', '.join(sorted(_TOOLS))}") from None


def tool_names() -> list[str]:
    return sorted(_TOOLS)


def load_tool_modules(modules: Iterable[str]) -> None:
    """Import the modules that register tools (each import happens once)."""
    for module in modules:
        if module:
            importlib.import_module(module)
