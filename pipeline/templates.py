"""Prompt templates: Jinja2's immutable sandbox, strict about undefined names.

Templates see `input` (the job input), `outputs` (earlier steps' outputs by step id) and, where a
step kind provides them, `item`, `index`, `results` and `output`. Dicts and lists render as JSON.

Templates come from pipeline files a producer may send, so rendering is bounded: at most
RENDER_SECONDS of work and MAX_RENDER_BYTES of output (checked at every call, loop step and chunk
of output), and `*`/`**` may not build values past those bytes. Over a limit: TemplateLimit.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, Undefined, nodes
from jinja2.runtime import Context
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment

RENDER_SECONDS = 2.0
MAX_RENDER_BYTES = 1024 * 1024


class TemplateLimit(OverflowError):
    """A template spent its time or output budget."""


class _Budget(threading.local):
    deadline = float("inf")


_budget = _Budget()


def _check_time() -> None:
    if time.monotonic() > _budget.deadline:
        raise TemplateLimit(f"rendering took over {RENDER_SECONDS:g} s")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every call and binary `*`/`**` checked against the budget."""

    intercepted_binops = frozenset({"*", "**"})

    def call(self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_time()
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_time()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) \
                        and len(seq) * n > MAX_RENDER_BYTES:
                    raise TemplateLimit(f"`*` would build a value of {len(seq) * n} items")
        if operator == "**" and isinstance(left, int) and isinstance(right, int) \
                and abs(left) > 1 and right * max(abs(left), 2).bit_length() > 8 * MAX_RENDER_BYTES:
            raise TemplateLimit("`**` would build a number too large to render")
        return super().call_binop(context, operator, left, right)


class _Range:
    """`range`, at most MAX_RANGE long, checking the time at every step (nested loops)."""

    def __init__(self, *args: int) -> None:
        self.values = range(*args)
        if len(self.values) > MAX_RANGE:
            raise TemplateLimit(f"range of {len(self.values)} is over the limit of {MAX_RANGE}")

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[int]:
        for value in self.values:
            _check_time()
            yield value


def _finalize(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


_env = _BoundedEnvironment(
    undefined=StrictUndefined, finalize=_finalize, autoescape=False, keep_trailing_newline=True
)
_env.filters["json"] = lambda v: json.dumps(v, ensure_ascii=False)
_env.globals["range"] = _Range

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
    chunks: list[str] = []
    size = 0
    with _bounded():
        for chunk in _compiled(source).generate(**context):
            size += len(chunk)
            if size > MAX_RENDER_BYTES:
                raise TemplateLimit(f"output over {MAX_RENDER_BYTES} characters")
            _check_time()
            chunks.append(chunk)
    return "".join(chunks)


def evaluate(expression: str, context: dict[str, Any]) -> Any:
    with _bounded():
        value = _compiled_expr(expression)(**context)
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()  # StrictUndefined: UndefinedError or SecurityError
    return value


class _bounded:
    """The budget for one render on this thread (a render inside one keeps the outer's)."""

    def __enter__(self) -> None:
        self.outer = _budget.deadline
        _budget.deadline = min(self.outer, time.monotonic() + RENDER_SECONDS)

    def __exit__(self, *_: object) -> None:
        _budget.deadline = self.outer


def referenced_outputs(source: str, *, expression: bool = False) -> set[str]:
    """Step ids a template reads through `outputs.ID` or `outputs['ID']`. Raises TemplateProblem."""
    return set(_referenced(source, expression))


@lru_cache(maxsize=4096)  # a producer checks the same templates at every submit
def _referenced(source: str, expression: bool) -> frozenset[str]:
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
    return frozenset(ids)
