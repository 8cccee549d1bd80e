"""Evals end to end on real workers and the fake model: the baseline records, an arm that
changes one step makes only that step's calls (the rest answered from the record, at no cost),
costs and latency compare as configured, the CLI writes its table, JSON and HTML and exits 1 on
a regression, eval runs are found by eval id and cleaned, and a model judge gives verdicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from legato import Legato, Llm, Pipeline
from legato.evals import Arm, Item, as_dict, clean, from_runs, parse_scorer, run_eval
from legato.spec import ModelConfig, Tool

ROOT = Path(__file__).resolve().parents[2]


def priced(base_url: str) -> Pipeline:
    prices = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
    models = {"small": ModelConfig(base_url=base_url, model="small-m", prices=prices),
              "large": ModelConfig(base_url=base_url, model="large-m", prices=prices)}
    return Pipeline(name="evaluated", models=models, steps=[
        Llm(id="summary", model="small", prompt="Summarize: {{ input.text }}"),
        Tool(id="length", tool="word_count", args={"text": "{{ outputs.summary }}"}),
        Llm(id="headline", model="small", prompt="Headline for: {{ outputs.summary }}"),
    ])


def items(n: int) -> list[Item]:
    tag = uuid.uuid4().hex[:8]  # inputs no earlier test recorded
    return [Item({"text": f"tides {tag} {i}"}, source=f"d:{i}") for i in range(n)]


def test_an_arm_calls_only_the_step_it_changed_and_what_depends_on_it(legato: Legato, fake,
                                                                     fake_model):
    spec = priced(fake_model)
    arms = [Arm("big-headline", {"headline": {"model": "large"}}),
            Arm("big-summary", {"summary": {"model": "large"}})]
    eval_id, results = run_eval(legato, spec, items(3), arms, parse_scorer("regex:Headline"),
                                timeout=120)
    base, headline, summary = results
    assert [a.name for a in results] == ["baseline", "big-headline", "big-summary"]
    assert all(i.status == "succeeded" for a in results for i in a.items)
    assert (base.calls_made, base.calls_saved) == (6, 0)  # it recorded every call
    assert (headline.calls_made, headline.calls_saved) == (3, 3)  # the summaries came recorded
    assert (summary.calls_made, summary.calls_saved) == (6, 0)  # its headlines read new input
    assert fake.stats()["by_model"] == {"small-m": 9, "large-m": 6}
    # Cost as configured: the recorded summaries' cost counts for the arm, not as spent now.
    for mine, theirs in zip(headline.items, base.items, strict=True):
        recorded = {r.path: r for r in legato.steps(theirs.run_id)}["summary"].usage.cost
        assert recorded > 0 and mine.spent > 0
        assert mine.cost - mine.spent == pytest.approx(recorded)
        assert mine.seconds > 0  # the recorded summary's time counts too
    report = as_dict(eval_id, spec.name, "regex:Headline", results, 0.0)
    assert report["regressed"] == []
    assert report["arms"][1]["items_changed"] == 3  # large-m's headlines read differently
    assert report["arms"][0]["cost_delta"] == 0
    assert all(i["passed"] for a in report["arms"] for i in a["items"])
    assert sorted(legato.store.eval_runs(eval_id)) == sorted(
        i.run_id for a in results for i in a.items)


def cli(stack_env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "legato.cli", *args], cwd=ROOT,
                          env={**os.environ, **stack_env, "COLUMNS": "200"}, capture_output=True,
                          text=True, timeout=180)


def test_the_cli_reports_exits_1_on_a_regression_and_cleans_up(legato: Legato, stack_env,
                                                               tmp_path):
    tag = uuid.uuid4().hex[:8]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"input": {"text": f"Legato journals {tag} {i}."}}) + "\n"
                            for i in range(2)))
    (tmp_path / "terse.yaml").write_text("steps:\n  headline: {prompt: 'Say nothing.'}\n")
    (tmp_path / "tokens.yaml").write_text("steps:\n  headline: {params: {max_tokens: 40}}\n")
    out, page = tmp_path / "report.json", tmp_path / "report.html"
    ran = cli(stack_env, "eval", "summarize", "--dataset", str(data),
              "--arm", f"tokens={tmp_path / 'tokens.yaml'}",
              "--arm", f"terse={tmp_path / 'terse.yaml'}", "--scorer", "regex:headline",
              "--json", str(out), "--html", str(page))
    assert ran.returncode == 1, ran.stdout + ran.stderr  # `terse` lost its headlines
    assert "regressed past 0: terse" in ran.stdout
    for column in ("calls made", "calls saved", "pass rate"):
        assert column in ran.stdout
    report = json.loads(out.read_text())
    arms = {a["name"]: a for a in report["arms"]}
    assert report["regressed"] == ["terse"]
    assert arms["baseline"]["pass_rate"] == 1 and arms["terse"]["pass_rate"] == 0
    assert arms["baseline"]["calls_made"] == 4
    assert (arms["tokens"]["calls_made"], arms["tokens"]["calls_saved"]) == (2, 2)
    assert 'data-arm="terse"' in page.read_text()

    eval_id = report["eval"]
    again = from_runs(legato.store, f"eval={eval_id},pipeline=summarize")
    assert len(again) == 6 and all(i.has_expected for i in again)
    assert cli(stack_env, "eval", "summarize", "--from-runs", f"eval={eval_id},limit=2",
               "--scorer", "json").returncode == 0  # its own outputs as expected: all pass

    assert cli(stack_env, "eval", "--clean", eval_id).returncode == 0
    assert legato.store.eval_runs(eval_id) == []
    assert clean(legato.store, eval_id) == (0, 0)
    for arm in report["arms"]:
        for item in arm["items"]:
            assert legato.store.get_steps(item["run"]) == []

    bad = cli(stack_env, "eval", "summarize", "--dataset", str(data), "--arm", "x=nowhere.yaml")
    assert bad.returncode == 2 and "arm 'x': cannot read" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_a_model_judge_gives_each_item_a_verdict(legato: Legato, fake, fake_model):
    fake.script({"rules": [{"match": {"contains": "Judge an answer"},
                            "reply": {"pass": True, "score": 0.75, "reason": "on topic"}}]})
    judge = parse_scorer("judge:small", rubric="Is the headline about the text?")
    eval_id, results = run_eval(legato, priced(fake_model), items(2), [], judge, timeout=120)
    verdicts = [i.verdict for i in results[0].items]
    assert [(v.score, v.passed, v.reason) for v in verdicts if v] == [(0.75, True, "on topic")] * 2
    runs = [legato.status(r) for r in legato.store.eval_runs(eval_id)]
    assert sorted(r.pipeline for r in runs) == ["eval-judge", "eval-judge", "evaluated",
                                                "evaluated"]
