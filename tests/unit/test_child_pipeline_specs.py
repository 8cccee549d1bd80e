"""`pipeline` steps without a broker: loading checks (unknown pipeline, cycles, templates),
the spec's own rules, the child's input rendering, ids, the canvas and the outcome policies."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery

from legato import Parallel, Pipeline, PipelineStep, RunRecord, SpecError
from legato.compile import Compiler
from legato.context import StepContext
from legato.envelope import StepRef
from legato.errors import PermanentError
from legato.graph import node
from legato.kinds.child import child_run_id, render_input, settle
from legato.loader import check_children, load_models, load_pipeline, resolve

ROOT = Path(__file__).resolve().parents[2]
CHILDREN = ROOT / "tests" / "data" / "children"
MODELS = ROOT / "pipelines" / "models.yaml"


def _load(name: str, pipelines_dir: Path = CHILDREN) -> Pipeline:
    return load_pipeline(name, pipelines_dir=pipelines_dir, models_file=MODELS)


def _check(pipeline: Pipeline) -> None:
    spec = resolve(pipeline, load_models(MODELS), source="parent")
    check_children(spec, source="parent", pipelines_dir=CHILDREN, models_file=MODELS,
                   stack=(spec.name,))


def test_a_cycle_of_child_pipelines_is_refused_naming_the_file_and_step():
    with pytest.raises(SpecError) as caught:
        _load("cycle_a")
    error = caught.value
    assert error.reason == "a cycle of child pipelines: cycle_a -> cycle_b -> cycle_a"
    assert Path(error.source).name == "cycle_b.yaml" and error.path == "steps[0].pipeline"


def test_a_pipeline_running_itself_is_a_cycle():
    with pytest.raises(SpecError) as caught:
        _load("cycle_self")
    assert caught.value.reason == "a cycle of child pipelines: cycle_self -> cycle_self"
    assert Path(caught.value.source).name == "cycle_self.yaml"


def test_an_unknown_child_pipeline_is_refused_at_its_step():
    fan = Parallel(id="fan", sections=[PipelineStep(id="ok", pipeline="child_echo",
                                                    input={"text": "x"}),
                                       PipelineStep(id="bad", pipeline="no_such_pipeline")])
    with pytest.raises(SpecError) as caught:
        _check(Pipeline(name="parent", steps=[fan]))
    assert caught.value.reason.startswith("unknown pipeline 'no_such_pipeline'")
    assert caught.value.path == "steps[0].sections[1].pipeline"


def test_children_are_checked_as_deep_as_they_go():
    assert _load("deep_1").steps[0].pipeline == "deep_2"  # -> deep_3 -> child_echo: sound


def test_a_broken_grandchild_is_refused_naming_its_own_file(tmp_path):
    (tmp_path / "top.yaml").write_text("steps:\n  - {kind: pipeline, id: a, pipeline: mid}\n")
    (tmp_path / "mid.yaml").write_text("steps:\n  - {kind: pipeline, id: b, pipeline: low}\n")
    (tmp_path / "low.yaml").write_text("steps:\n  - {kind: llm, id: c, model: nope, prompt: x}\n")
    with pytest.raises(SpecError) as caught:
        _load("top", tmp_path)
    assert Path(caught.value.source).name == "low.yaml" and caught.value.path == "steps[0].model"


def test_the_child_input_templates_must_read_existing_steps():
    step = PipelineStep(id="ask", pipeline="child_echo",
                        input={"doc": {"text": "{{ outputs.nope }}"}})
    with pytest.raises(SpecError) as caught:
        _check(Pipeline(name="parent", steps=[step]))
    assert caught.value.path == "steps[0].input.doc.text"
    assert "'nope'" in caught.value.reason


def test_a_child_is_named_never_given_as_a_path(tmp_path):
    (tmp_path / "parent.yaml").write_text(
        "steps:\n  - {kind: pipeline, id: up, pipeline: ../child_echo}\n")
    with pytest.raises(SpecError) as caught:
        _load("parent", tmp_path)
    assert caught.value.path == "steps[0].pipeline"


@pytest.mark.parametrize(("fields", "message"), [
    ({"on_failure": "fallback"}, "on_failure `fallback` needs a `fallback` value"),
    ({"fallback": 1}, "`fallback` is used only with on_failure: fallback"),
])
def test_a_fallback_goes_with_its_policy(fields, message):
    with pytest.raises(ValueError, match=message):
        PipelineStep(id="x", pipeline="child_echo", **fields)


def test_the_graph_knows_what_the_child_input_reads():
    spec = Pipeline(name="p", steps=[
        PipelineStep(id="first", pipeline="child_echo", input={"text": "a"}),
        PipelineStep(id="second", pipeline="child_echo",
                     input={"text": "{{ outputs.first }}", "all": ["{{ outputs['first'] }}"]}),
    ])
    assert node(spec, "second").reads == ("first",)


def _ctx(**outputs) -> StepContext:
    return StepContext(input={"docs": [1, 2], "name": "ana"}, outputs=outputs, models={},
                       http=None,  # type: ignore[arg-type]
                       step=StepRef(run_id="r", path="p"))


def test_the_child_input_renders_text_and_keeps_whole_expressions_as_values():
    rendered = render_input({"docs": "{{ input.docs }}", "greeting": "hi {{ input.name }}",
                             "nested": {"n": " {{ outputs.count + 1 }} ", "fixed": 3}},
                            _ctx(count=41))
    assert rendered == {"docs": [1, 2], "greeting": "hi ana", "nested": {"n": 42, "fixed": 3}}
    with pytest.raises(PermanentError, match="template failed"):
        render_input({"x": "{{ input.missing }}"}, _ctx())


def test_a_child_id_is_the_same_for_every_delivery_and_differs_by_step():
    assert child_run_id("run1", "fan/a") == child_run_id("run1", "fan/a")
    assert len({child_run_id("run1", "fan/a"), child_run_id("run1", "fan/b"),
                child_run_id("run2", "fan/a")}) == 3


def test_a_pipeline_step_is_one_control_task_and_a_parallel_of_them_a_chord():
    spec = Pipeline(name="p", steps=[Parallel(id="fan", sections=[
        PipelineStep(id=f"c{i}", pipeline="child_echo", input={"text": "x"}) for i in range(3)])])
    compiler = Compiler(Celery("t"), "run", "hash")  # signatures built, never sent
    queues = compiler.queues(spec)
    assert queues["legato.control"] == ["fan", "fan/c0", "fan/c1", "fan/c2"]
    chord = compiler.step(spec.steps[0], "fan")
    assert [t.task for t in chord.tasks] == ["legato.pipeline"] * 3


def _child(status: str, output=None, error=None) -> RunRecord:
    return RunRecord(id="child", pipeline="child_echo", spec_hash="h", status=status,
                     created_at=0.0, output=output, error=error)


def test_the_child_outcome_follows_the_policy():
    ok = settle(PipelineStep(id="x", pipeline="child_echo"), _child("succeeded", {"a": 1}))
    assert ok.output == {"a": 1} and ok.detail == {"child_run": "child",
                                                  "child_status": "succeeded"}
    failed = _child("failed", error="boom: exploded")
    with pytest.raises(PermanentError, match=r"child run child \(child_echo\) failed: boom"):
        settle(PipelineStep(id="x", pipeline="child_echo"), failed)
    skipped = settle(PipelineStep(id="x", pipeline="child_echo", on_failure="skip"), failed)
    assert skipped.output is None and "exploded" in skipped.detail["child_error"]
    fallback = settle(PipelineStep(id="x", pipeline="child_echo", on_failure="fallback",
                                   fallback="plan b"), _child("cancelled", error="stop"))
    assert fallback.output == "plan b" and fallback.detail["child_status"] == "cancelled"
