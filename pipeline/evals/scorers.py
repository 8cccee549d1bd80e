"""How an eval scores an output. `--scorer` names one:

    exact              the output equals `expected` (strings compared as they are)
    json               the output and `expected` are equal as JSON (a string output is parsed)
    schema:FILE.json   the output is valid against a JSON Schema (no `expected` needed)
    regex:PATTERN      the output (as text) matches PATTERN somewhere
    python:mod.fn      fn(output, expected, input) -> bool, a score in [0, 1], or
                       {"score": ..., "pass": ..., "reason": ...}
    judge:ALIAS        a model judges the output by `--rubric` (a structured verdict); it runs
                       as Legato runs of a one-step pipeline (see `judge_pipeline`)

A score is in [0, 1]; an item passes at 1 (exact, json, schema, regex), at `pass` (python's
mapping, the judge), else at 0.5 or more.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from legato import schema as schemas
from legato.errors import InputError
from legato.evals.dataset import Item
from legato.models.config import ModelConfig
from legato.spec import Pipeline

PASS_AT = 0.5
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"pass": {"type": "boolean"}, "score": {"type": "number", "minimum": 0,
                                                          "maximum": 1},
                   "reason": {"type": "string"}},
    "required": ["pass", "score", "reason"],
}
JUDGE_PROMPT = """Judge an answer by this rubric.

Rubric:
{{ input.rubric }}

Task input:
{{ input.input | tojson }}
{% if input.expected is not none %}
Expected answer:
{{ input.expected | tojson }}
{% endif %}
Answer to judge:
{{ input.output | tojson }}

Reply with pass (true or false), a score from 0 to 1, and a one-sentence reason."""


@dataclass(frozen=True)
class Verdict:
    score: float
    passed: bool
    reason: str = ""


@dataclass(frozen=True)
class Scorer:
    """A local scorer (`check` set) or a model judge (`judge` set: an alias and a rubric)."""

    name: str
    needs_expected: bool = False
    check: Callable[[Any, Item], Verdict] | None = None
    judge: str | None = None
    rubric: str = ""

    def score(self, output: Any, item: Item) -> Verdict:
        assert self.check is not None, "a judge scores through judge runs"
        try:
            return self.check(output, item)
        except Exception as exc:  # a scorer's own failure fails the item, visibly
            return Verdict(0.0, False, f"scorer {self.name} raised {type(exc).__name__}: {exc}")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                           sort_keys=True)


def _as_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _both(ok: bool, why: str) -> Verdict:
    return Verdict(1.0 if ok else 0.0, ok, "" if ok else why)


def _exact(output: Any, item: Item) -> Verdict:
    return _both(output == item.expected, "differs from expected")


def _json_equal(output: Any, item: Item) -> Verdict:
    return _both(_as_json(output) == _as_json(item.expected), "differs from expected as JSON")


def _schema_check(validator: Any) -> Callable[[Any, Item], Verdict]:
    def check(output: Any, item: Item) -> Verdict:
        problem = validator(_as_json(output))
        return _both(problem is None, str(problem))
    return check


def _regex(pattern: re.Pattern[str]) -> Callable[[Any, Item], Verdict]:
    def check(output: Any, item: Item) -> Verdict:
        return _both(pattern.search(_text(output)) is not None,
                     f"no match for /{pattern.pattern}/")
    return check


def _python(fn: Callable[..., Any], name: str) -> Callable[[Any, Item], Verdict]:
    def check(output: Any, item: Item) -> Verdict:
        value = fn(output, item.expected if item.has_expected else None, item.input)
        if isinstance(value, dict):
            score = float(value.get("score", 1.0 if value.get("pass") else 0.0))
            return Verdict(score, bool(value.get("pass", score >= PASS_AT)),
                           str(value.get("reason", "")))
        if isinstance(value, bool):
            return _both(value, f"{name} said no")
        if isinstance(value, int | float):
            return Verdict(float(value), float(value) >= PASS_AT)
        raise TypeError(f"returned {type(value).__name__}, not a bool, number or mapping")
    return check


def _validator(path: Path) -> Callable[[Any], str | None]:
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"--scorer schema:{path}: cannot read it: {exc.strerror}") from None
    except ValueError as exc:
        raise InputError(f"--scorer schema:{path}: not JSON ({exc})") from None
    try:
        schemas.check_schema(document)
    except schemas.SchemaProblem as exc:
        raise InputError(f"--scorer schema:{path}: {exc}") from None

    def problem(value: Any) -> str | None:
        try:
            schemas.validate(document, value)
        except ValidationError as exc:
            return schemas.describe(exc)
        return None
    return problem


def _function(dotted: str) -> Callable[..., Any]:
    module, _, attr = dotted.replace(":", ".").rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), attr) if module else None
    except ImportError as exc:
        raise InputError(f"--scorer python:{dotted}: cannot import {module!r}: {exc}") from None
    except AttributeError:
        fn = None
    if not callable(fn):
        raise InputError(f"--scorer python:{dotted}: no function {attr!r} in {module!r}")
    return fn


def parse_scorer(text: str, *, rubric: str = "") -> Scorer:
    """`--scorer` text -> a Scorer. Raises InputError naming what is wrong."""
    kind, _, arg = text.partition(":")
    if kind == "exact" and not arg:
        return Scorer("exact", needs_expected=True, check=_exact)
    if kind == "json" and not arg:
        return Scorer("json", needs_expected=True, check=_json_equal)
    if kind == "schema" and arg:
        return Scorer(text, check=_schema_check(_validator(Path(arg))))
    if kind == "regex" and arg:
        try:
            return Scorer(text, check=_regex(re.compile(arg)))
        except re.error as exc:
            raise InputError(f"--scorer {text!r}: not a regular expression ({exc})") from None
    if kind == "python" and arg:
        return Scorer(text, check=_python(_function(arg), arg))
    if kind == "judge" and arg:
        if not rubric.strip():
            raise InputError(f"--scorer {text!r} needs --rubric (text, or @file)")
        return Scorer(text, judge=arg, rubric=rubric)
    raise InputError(f"--scorer {text!r}: expected exact, json, schema:FILE, regex:PATTERN, "
                     f"python:module.fn or judge:ALIAS")


def judge_pipeline(alias: str, models: dict[str, ModelConfig]) -> Pipeline:
    """The one-step pipeline a judge runs: input {rubric, input, expected, output}; output a
    verdict {pass, score, reason}. Its calls are cached like any run's."""
    from legato.loader import resolve

    judge = Pipeline.model_validate({"name": "eval-judge", "cache": "read-write", "steps": [
        {"kind": "llm", "id": "verdict", "model": alias, "prompt": JUDGE_PROMPT,
         "output_schema": VERDICT_SCHEMA}]})
    return resolve(judge, models, source=f"judge:{alias}")


def verdict_of(output: Any) -> Verdict:
    value = _as_json(output)
    if not isinstance(value, dict):
        return Verdict(0.0, False, "the judge gave no verdict")
    score = min(1.0, max(0.0, float(value.get("score", 0.0))))
    return Verdict(score, bool(value.get("pass")), str(value.get("reason", "")))
