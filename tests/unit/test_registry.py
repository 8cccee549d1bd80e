"""The step-kind registry is the one list of kinds: the `Step` union, the loader's errors, the one
walk over the tree and the compiler all read it; retry is decided by an error's type."""

from __future__ import annotations

import typing
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery import Celery

from legato import tree
from legato.compile import Compiler
from legato.errors import PermanentError, SpecError, TransientError
from legato.kinds import KINDS, Step, kind_of
from legato.loader import load_pipeline
from legato.spec import Chain, Llm, Parallel, Pipeline, Route, Tool, Vote
from legato.spec import Classifier as Rule
from legato.tasks.base import _retry_in

ROOT = Path(__file__).resolve().parents[2]


def _union_members() -> set[type]:
    union, _ = typing.get_args(Step)
    return set(typing.get_args(union))


def test_the_step_union_is_exactly_the_registered_kinds() -> None:
    assert _union_members() == {kind.spec for kind in KINDS.values()}
    for name, kind in KINDS.items():
        assert kind.spec.model_fields["kind"].default == name == kind.name


def test_errors_that_list_kinds_list_every_registered_kind(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - {kind: teleport, id: a}\n")
    with pytest.raises(SpecError) as caught:
        load_pipeline(str(bad), pipelines_dir=tmp_path, models_file=ROOT / "pipelines/models.yaml")
    message = str(caught.value)
    assert "steps[0].kind" in message
    for name in KINDS:
        assert name in message, name


NESTED = Pipeline(name="n", steps=[
    Chain(id="c", queue="q.c", steps=[
        Llm(id="a", model="m", prompt="p"),
        Route(id="r", classifier=Rule(rule="'x'"), branches={
            "x": Tool(id="x", tool="word_count"),
            "y": Parallel(id="y", queue="q.y", vote=Vote(n=2, step=Llm(id="v", model="m",
                                                                      prompt="p"))),
        }),
    ]),
])


def test_one_walk_gives_file_place_path_queue_and_publishes() -> None:
    visits = [(v.where, v.path, v.queue, v.publishes) for v in tree.walk(NESTED.steps)]
    assert visits == [
        ("steps[0]", "c", "q.c", ()),
        ("steps[0].steps[0]", "c/a", "q.c", ("a",)),
        ("steps[0].steps[1]", "c/r", "q.c", ()),
        ("steps[0].steps[1].branches.x", "c/r/x", "q.c", ("x", "r", "c")),
        ("steps[0].steps[1].branches.y", "c/r/y", "q.y", ("y", "r", "c")),
        ("steps[0].steps[1].branches.y.vote.step", "c/r/y/v", "q.y", ()),
    ]


def test_every_kind_compiles_through_its_own_module() -> None:
    compiler = Compiler(Celery("t"), "RUN", "HASH")
    for visit in tree.walk(NESTED.steps):
        assert kind_of(visit.step) is KINDS[visit.step.kind]
        assert compiler.step(visit.step, visit.path, None) is not None


class FlakyAgain(TransientError):
    """A subclass of a transient error is transient too (it was not, by type name)."""


@pytest.mark.parametrize("error, retried", [
    (TransientError("503"), True), (FlakyAgain("again"), True),
    (PermanentError("400"), False), (None, False),
])
def test_retry_is_decided_by_the_error_type(error: Exception | None, retried: bool) -> None:
    task = SimpleNamespace(request=SimpleNamespace(retries=0))
    settings = SimpleNamespace(step_retries=3, step_retry_seconds=2.0)
    wait = _retry_in(task, error, settings)  # type: ignore[arg-type]
    assert (wait is not None) == retried
    exhausted = SimpleNamespace(request=SimpleNamespace(retries=3))
    assert _retry_in(exhausted, error, settings) is None  # type: ignore[arg-type]
