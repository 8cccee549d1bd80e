"""Prompt templates: Jinja2's immutable sandbox, strict about undefined names.

Templates see `input` (the job input), `outputs` (earlier steps' outputs by step id) and, where a
step kind provides them, `item`, `index`, `results` and `output`. Dicts and lists render as JSON.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, Undefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _finalize(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


_env = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, finalize=_finalize, autoescape=False, keep_trailing_newline=True
)
_env.filters["json"] = lambda v: json.dumps(v, ensure_ascii=False)

OUTPUTS = "outputs"


class TemplateProblem(ValueError):
    """A template does not parse; the message says where."""


@lru_cache(maxsize=1024)
def _compiled(source: str) -> Template:
    return _env.from_string(source)


@lru_cache(maxsize=1024)
def _compiled_expr(source: str) -> Any:
    # Not Jinja's default `undefined_to_none`: that would turn a misspelt name, or an attribute
    # the sandbox refuses, into None (a gate quietly false, a rule picking the default branch).
    return _env.compile_expression(source, undefined_to_none=False)


def render(source: str, context: dict[str, Any]) -> str:
    return _compiled(source).render(**context)


def evaluate(expression: str, context: dict[str, Any]) -> Any:
    value = _compiled_expr(expression)(**context)
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()  # StrictUndefined: UndefinedError or SecurityError
    return value


def referenced_outputs(source: str, *, expression: bool = False) -> set[str]:
    """Step ids a template reads through `outputs.ID` or `outputs['ID']`. Raises TemplateProblem."""
    try:
        tree = _env.parse(f"{{{{ {source} }}}}" if expression else source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error on line {exc.lineno}: {exc.message}") from exc
    ids: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = node.node  # type: ignore[attr-defined]
        if not (isinstance(target, nodes.Name) and target.name == OUTPUTS):
            continue
        if isinstance(node, nodes.Getattr):
            ids.add(node.attr)
            continue
        key = node.arg  # type: ignore[attr-defined]
        if isinstance(key, nodes.Const) and isinstance(key.value, str):
            ids.add(key.value)
    return ids
