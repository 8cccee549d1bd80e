"""Evals without a broker: arms change exactly the steps they name (and are refused, changing
nothing, when they name a step or field that is not there), datasets and run filters are read
or refused line by line, scorers score, and an arm that drops below the baseline regresses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from legato.errors import InputError, SpecError
from legato.evals import (
    Arm,
    ArmResult,
    Item,
    ItemResult,
    Verdict,
    apply,
    as_dict,
    load_arm,
    load_dataset,
    parse_scorer,
    regressions,
    render_html,
)
from legato.evals.dataset import parse_filter
from legato.evals.scorers import verdict_of
from legato.loader import load_models, load_pipeline

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "pipelines"


def summarize():
    return load_pipeline("summarize", pipelines_dir=PIPELINES,
                         models_file=PIPELINES / "models.yaml")


def test_an_arm_changes_only_the_steps_it_names():
    base = summarize()
    arm = Arm("big", {"headline": {"model": "large", "params": {"max_tokens": 20}}})
    changed = apply(base, arm, load_models(PIPELINES / "models.yaml"))
    steps = {s.id: s for s in changed.steps}
    assert steps["headline"].model == "large"
    assert steps["headline"].params == {"max_tokens": 20}  # merged into the step's own (none)
    assert steps["summary"] == base.steps[0]
    assert "large" in changed.models and changed.content_hash() != base.content_hash()
    assert apply(base, Arm("baseline"), {}) is base


@pytest.mark.parametrize(("steps", "message"), [
    ({"nope": {"model": "large"}}, "no step 'nope'"),
    ({"summary": {"colour": "red"}}, "has no field 'colour'"),
    ({"summary": {"id": "other"}}, "has no field 'id'"),
    ({"summary": {"model": "huge"}}, "unknown model alias 'huge'"),
    ({"headline": {"prompt": "{{ outputs.missing }}"}}, "missing"),
])
def test_a_bad_arm_is_refused_naming_it(steps, message):
    base = summarize()
    before = base.model_dump()
    with pytest.raises(SpecError, match=message) as caught:
        apply(base, Arm("fast", steps), load_models(PIPELINES / "models.yaml"))
    assert "arm fast" in str(caught.value)
    assert base.model_dump() == before


def test_an_arm_file_is_read_or_refused(tmp_path):
    good = tmp_path / "fast.yaml"
    good.write_text("steps:\n  summary: {model: large}\n")
    assert load_arm(f"fast={good}") == Arm("fast", {"summary": {"model": "large"}})
    (tmp_path / "empty.yaml").write_text("steps: {}\n")
    for text, message in [("fast", "name=file.yaml"), (f"baseline={good}", "always run"),
                          (f"x={tmp_path / 'none.yaml'}", "cannot read"),
                          (f"x={tmp_path / 'empty.yaml'}", "expected `steps:`")]:
        with pytest.raises(SpecError, match=message):
            load_arm(text)


def test_a_dataset_is_read_and_a_bad_line_named(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"input": {"text": "a"}, "expected": "A"}\n\n{"input": {"text": "b"}}\n')
    items = load_dataset(data)
    assert [i.input for i in items] == [{"text": "a"}, {"text": "b"}]
    assert items[0].expected == "A" and not items[1].has_expected
    assert items[1].source == f"{data}:3"
    for body, message in [('{"input": 1}\nnot json\n', ":2: not JSON"),
                          ('{"inputs": 1}\n', ":1: expected an object with `input`"),
                          ('{"input": 1, "extra": 2}\n', "unknown field 'extra'"),
                          ("\n", "has no items")]:
        data.write_text(body)
        with pytest.raises(InputError, match=message):
            load_dataset(data)


def test_a_run_filter_is_parsed_or_refused():
    assert parse_filter("pipeline=summarize,status=succeeded,since=2h") == {
        "pipeline": "summarize", "status": "succeeded", "since": "2h"}
    with pytest.raises(InputError, match="'colour=red' is not one of"):
        parse_filter("colour=red")


def test_scorers_score(tmp_path):
    item = Item({"q": 1}, {"a": 1})
    assert parse_scorer("exact").score({"a": 1}, item).passed
    assert not parse_scorer("exact").score({"a": 2}, item).passed
    assert parse_scorer("json").score('{"a": 1}', item).passed
    assert parse_scorer("regex:^It has \\d+").score("It has 4 words", item).passed
    assert not parse_scorer("regex:^It has \\d+").score("four", item).passed
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"a": {"type": "integer"}},
                                  "required": ["a"]}))
    assert parse_scorer(f"schema:{schema}").score('{"a": 3}', item).passed
    refused = parse_scorer(f"schema:{schema}").score({"b": 3}, item)
    assert not refused.passed and "a" in refused.reason
    scored = parse_scorer("python:tests.evals_scorers.length_score").score("abcd", item)
    assert scored == Verdict(0.4, False, "")
    broken = parse_scorer("python:tests.evals_scorers.broken").score("x", item)
    assert not broken.passed and "ZeroDivisionError" in broken.reason
    judge = parse_scorer("judge:small", rubric="Is it polite?")
    assert judge.judge == "small" and judge.check is None
    assert verdict_of({"pass": True, "score": 2, "reason": "fine"}) == Verdict(1.0, True, "fine")


@pytest.mark.parametrize(("text", "message"), [
    ("fuzzy", "expected exact, json"), ("regex:(", "not a regular expression"),
    ("python:tests.nowhere.fn", "cannot import"), ("python:tests.evals_scorers.absent",
                                                   "no function 'absent'"),
    ("judge:small", "needs --rubric"), ("schema:/nonexistent.json", "cannot read"),
])
def test_a_bad_scorer_is_refused(text, message):
    with pytest.raises(InputError, match=message):
        parse_scorer(text)


def _arm(name: str, scores: list[float], *, cost: float = 1.0) -> ArmResult:
    items = [ItemResult(f"d:{i}", f"run{i}", "succeeded", f"out {name} {s}", None, 1, 2,
                        cost, cost / 2, 0.5, Verdict(s, s >= 1)) for i, s in enumerate(scores)]
    return ArmResult(name, "hash", items)


def test_an_arm_below_the_baseline_regresses_and_the_report_says_so():
    arms = [_arm("baseline", [1, 1]), _arm("same", [1, 1], cost=2.0), _arm("worse", [1, 0])]
    assert regressions(arms, 0.0) == ["worse"]
    assert regressions(arms, 0.5) == []
    report = as_dict("ev1", "summarize", "exact", arms, 0.0)
    same, worse = report["arms"][1], report["arms"][2]
    assert same["cost_delta"] == pytest.approx(1.0) and same["latency_delta"] == 0
    assert worse["pass_rate"] == 0.5 and worse["items_changed"] == 2
    assert worse["calls_made"] == 2 and worse["calls_saved"] == 4
    page = render_html(report)
    assert 'data-arm="worse"' in page and "regressed" in page and "<script" not in page
