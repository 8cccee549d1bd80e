"""Tools: Python functions registered by name and called by `tool` steps."""

from legato.tools import builtin, http  # noqa: F401  (register the built-in tools)
from legato.tools.http import http_tool
from legato.tools.registry import (
    ToolNotFound,
    ToolSpec,
    get_tool,
    load_tool_modules,
    tool,
    tool_names,
)

__all__ = ["ToolNotFound", "ToolSpec", "get_tool", "http_tool", "load_tool_modules", "tool",
           "tool_names"]
