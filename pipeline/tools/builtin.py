"""Small built-in tools, always registered; handy in gates and examples."""

from __future__ import annotations

import re
from collections import Counter

from legato.tools.registry import tool

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
_STOP = frozenset(
    "the a an and or of to in on for with is are was were be it this that as at by from".split()  # noqa: SIM905
)


@tool
def word_count(text: str) -> int:
    """Number of words in `text`."""
    return len(text.split())


@tool
def keywords(text: str, top: int = 5) -> list[str]:
    """The `top` most frequent non-trivial words, most frequent first (ties alphabetical)."""
    words = [w.lower() for w in _WORD.findall(text) if w.lower() not in _STOP]
    ranked = sorted(Counter(words).items(), key=lambda kv: (-kv[1], kv[0]))
    return [w for w, _ in ranked[:top]]


@tool
def markdown_table(rows: list[dict[str, object]]) -> str:
    """Render a list of flat objects as a Markdown table (columns in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
