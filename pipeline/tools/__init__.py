"""Tools: Python functions registered by name and called by `tool` steps."""

from pipeline.tools import builtin  # noqa: F401  (registers the built-in tools)
from pipeline.tools.registry import ToolNotFound, get_tool, load_tool_modules, tool, tool_names

__all__ = ["ToolNotFound", "get_tool", "load_tool_modules", "tool", "tool_names"]
