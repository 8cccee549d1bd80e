"""Prompt templates: what they render, what they refuse, and which step outputs they read."""

from __future__ import annotations

import time
from typing import Any

import pytest
from jinja2.exceptions import SecurityError, UndefinedError

from legato import templates
from legato.templates import (
    RENDER_SECONDS,
    TemplateLimit,
    TemplateProblem,
    evaluate,
    referenced_outputs,
    render,
)

CONTEXT: dict[str, Any] = {
    "input": {"text": "héllo", "n": 3},
    "outputs": {"summary": "short", "facts": [1, 2]},
}


def test_renders_input_and_outputs() -> None:
    text = render("{{ input.text }} / {{ outputs.summary }} / {{ outputs['summary'] }}", CONTEXT)
    assert text == "héllo / short / short"


def test_dicts_and_lists_render_as_json_not_python_repr() -> None:
    text = render("{{ input }} {{ outputs.facts }}", CONTEXT)
    assert text == '{"text": "héllo", "n": 3} [1, 2]'


def test_json_not_python_for_strings_none_and_booleans_inside_lists() -> None:
    assert render("{{ x }}", {"x": ["a", None, True]}) == '["a", null, true]'
    assert render("{{ x }}", {"x": {"k": False}}) == '{"k": false}'


def test_json_filter_renders_strings_quoted() -> None:
    assert render("{{ outputs.summary | json }}", CONTEXT) == '"short"'


def test_control_flow_and_trailing_newline_are_kept() -> None:
    source = "{% for x in outputs.facts %}- {{ x }}\n{% endfor %}"
    assert render(source, CONTEXT) == "- 1\n- 2\n"


@pytest.mark.parametrize("source", ["{{ missing }}", "{{ input.nope }}", "{{ outputs.absent }}"])
def test_undefined_names_raise(source: str) -> None:
    with pytest.raises(UndefinedError):
        render(source, CONTEXT)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__ }}",
        "{{ input.__class__ }}",
    ],
)
def test_sandbox_blocks_python_internals(source: str) -> None:
    with pytest.raises(SecurityError):
        render(source, CONTEXT)


@pytest.mark.parametrize("source", ["{{ outputs.facts.append(3) }}", "{{ input.update(n=4) }}"])
def test_sandbox_is_immutable(source: str) -> None:
    with pytest.raises(SecurityError):
        render(source, CONTEXT)
    assert CONTEXT["outputs"]["facts"] == [1, 2] and CONTEXT["input"]["n"] == 3


def test_sandbox_caps_ranges() -> None:
    with pytest.raises(OverflowError):
        render("{% for i in range(10**9) %}{% endfor %}", CONTEXT)


def test_expressions_evaluate_to_values() -> None:
    assert evaluate("output >= 3", {"output": 5}) is True
    assert evaluate("output >= 3", {"output": 2}) is False
    assert evaluate("input.n * 2", CONTEXT) == 6
    assert evaluate("'billing' if 'refund' in input.text else 'general'", CONTEXT) == "general"


@pytest.mark.parametrize("expression", ["''.__class__", "cycler.__init__.__globals__"])
def test_expressions_are_sandboxed_too(expression: str) -> None:
    # Not quietly None (Jinja's `undefined_to_none`): a gate or a rule must not pass on it.
    with pytest.raises(SecurityError):
        evaluate(expression, {})


@pytest.mark.parametrize("expression", ["missing", "input.nope", "outputs.absent"])
def test_expressions_are_strict_about_undefined_names(expression: str) -> None:
    with pytest.raises(UndefinedError):
        evaluate(expression, CONTEXT)


def test_expressions_may_still_yield_none() -> None:
    assert evaluate("nothing", {"nothing": None}) is None


def test_referenced_outputs_finds_attribute_and_item_access() -> None:
    source = "{{ outputs.x }} {{ outputs['y'] }} {% if outputs.z %}{{ outputs.z.deep }}{% endif %}"
    assert referenced_outputs(source) == {"x", "y", "z"}


def test_referenced_outputs_ignores_other_names_and_dynamic_keys() -> None:
    source = ("{{ input.outputs }} {{ other.x }} {{ item.title }} {{ outputs[input.key] }} "
              "{% for name in outputs %}{{ name }}{% endfor %}")
    assert referenced_outputs(source) == set()


def test_referenced_outputs_in_expressions() -> None:
    assert referenced_outputs("outputs.a > 1 and outputs['b']", expression=True) == {"a", "b"}
    assert referenced_outputs("output >= 3", expression=True) == set()


def test_referenced_outputs_parses_a_template_once_and_hands_out_a_copy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A producer checks every template at every submit: the parse is kept, the answer is not
    shared (a caller adding to it changes nothing for the next)."""
    parses: list[str] = []
    parse = templates._env.parse
    monkeypatch.setattr(templates._env, "parse", lambda s: parses.append(s) or parse(s))
    source = "{{ outputs.first_of_its_kind }} {{ outputs['second'] }}"
    found = referenced_outputs(source)
    found.add("intruder")
    assert referenced_outputs(source) == {"first_of_its_kind", "second"}
    assert parses == [source]
    with pytest.raises(TemplateProblem):  # a bad one is refused every time, not remembered
        referenced_outputs("{{ outputs.x ")
    with pytest.raises(TemplateProblem):
        referenced_outputs("{{ outputs.x ")


@pytest.mark.parametrize("source, expression", [("{{ input.x ", False), ("{% for %}", False),
                                                ("output >", True)])
def test_syntax_errors_are_template_problems_with_a_line(source: str, expression: bool) -> None:
    with pytest.raises(TemplateProblem, match=r"syntax error on line \d+"):
        referenced_outputs(source, expression=expression)


def test_template_problem_is_a_value_error() -> None:
    assert issubclass(templates.TemplateProblem, ValueError)


@pytest.mark.parametrize("source", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "{{ 'x' * 100000000 }}",
    "{{ [1] * 100000000 }}",
    "{{ 10 ** 100000000 }}",
    "{% for i in range(100000) %}{{ 'many characters of output, again and again' }}{% endfor %}",
], ids=["nested-ranges", "macro-recursion", "str-times", "list-times", "power", "output-size"])
def test_a_hostile_template_stops_at_its_time_or_size_limit(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateLimit):
        render(source, CONTEXT)
    assert time.monotonic() - started < RENDER_SECONDS + 1.0


def test_bounded_ranges_still_behave_like_ranges() -> None:
    assert render("{{ range(3)|length }} {{ range(3)|list }} {% for i in range(2, 5) %}{{ i }}"
                  "{% endfor %}", CONTEXT) == "3 [0, 1, 2] 234"
    assert evaluate("4 in range(5)", {}) is True
