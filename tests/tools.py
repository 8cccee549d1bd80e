"""Tools registered for the tests (loaded by workers through LEGATO_TOOL_MODULES)."""

from pipeline.tools import tool


@tool
def explode(text: str) -> str:
    """Always fails: for failure-policy tests."""
    raise RuntimeError(f"exploded on {text[:20]!r}")
