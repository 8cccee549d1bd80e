"""`pipeline` steps: child runs of their own, the parent parked meanwhile (real workers, the fake
model). The child pipelines are in tests/data/children/; the `pipeline` steps run on a worker of
their own (CHILDREN_QUEUE) whose pipelines directory that is, with a nesting limit of 2."""

from __future__ import annotations

import json
import signal
import socket
import uuid
from pathlib import Path

import pytest

from legato import Legato, Llm, Parallel, Pipeline, PipelineStep, RunNotFound, SpecError
from legato.kinds.child import child_run_id
from legato.kinds.parallel import Aggregate
from legato.local import processes
from legato.settings import Settings, replace
from tests.conftest import FAST_RECOVERY, eventually

ROOT = Path(__file__).resolve().parents[2]
CHILDREN = ROOT / "tests" / "data" / "children"
CHILDREN_QUEUE = "legato.test.children"
KILL_QUEUE = "legato.test.children.kill"


def _child_env(stack_env: dict[str, str]) -> dict[str, str]:
    return {**stack_env, "LEGATO_PIPELINES_DIR": str(CHILDREN),
            "LEGATO_MODELS_FILE": str(ROOT / "pipelines" / "models.yaml"),
            "LEGATO_MAX_PIPELINE_DEPTH": "2"}


@pytest.fixture(scope="module")
def children_worker(stack_env, workers, tmp_path_factory):
    service = processes.worker("children", [CHILDREN_QUEUE], env=_child_env(stack_env),
                               log_dir=tmp_path_factory.mktemp("children"))
    with service:
        yield service


@pytest.fixture
def producer(children_worker) -> Legato:
    """A producer whose pipelines directory holds the child pipelines (its loader checks them)."""
    return Legato(replace(Settings.from_env(), pipelines_dir=CHILDREN,
                          models_file=str(ROOT / "pipelines" / "models.yaml")))


def _child(step_id: str, pipeline: str, queue: str = CHILDREN_QUEUE, **fields) -> PipelineStep:
    return PipelineStep(id=step_id, pipeline=pipeline, queue=queue, **fields)


def _run_or_none(legato: Legato, run_id: str):
    try:
        return legato.status(run_id)
    except RunNotFound:
        return None


def test_the_child_runs_as_its_own_run_and_its_output_is_the_step_output(producer, fake):
    word = uuid.uuid4().hex[:8]
    parent = Pipeline(name="parent_echo", steps=[
        _child("ask", "child_echo", input={"text": "{{ input.word }}"}),
        Llm(id="after", model="small", prompt="parent got {{ outputs.ask }}"),
    ])
    run_id = producer.submit(parent, {"word": word})
    run = producer.wait(run_id, timeout=60)
    assert run.status == "succeeded", run.error

    child_id = child_run_id(run_id, "ask")
    child = producer.status(child_id)
    assert child.status == "succeeded" and child.pipeline == "child_echo"
    assert (child.parent_run, child.parent_step, child.depth) == (run_id, "ask", 1)
    assert child.input == {"text": word}
    assert child.spec_hash == producer.load("child_echo").content_hash()  # pinned, its own
    assert producer.store.children(run_id) == {"ask": child_id}
    step = producer.store.get_step(run_id, "ask")
    assert step.kind == "pipeline" and step.output == child.output
    assert step.detail["child_run"] == child_id
    assert [s.path for s in producer.steps(child_id)] == ["answer"]  # its own journal
    assert fake.stats()["by_step"][f"{child_id}/answer"] == 1


@pytest.mark.parametrize(("policy", "fields", "status", "output"), [
    ("fail", {}, "failed", None),
    ("skip", {"on_failure": "skip"}, "succeeded", None),
    ("fallback", {"on_failure": "fallback", "fallback": {"plan": "b"}}, "succeeded",
     {"plan": "b"}),
])
def test_a_failed_child_follows_the_steps_on_failure(producer, fake, policy, fields, status,
                                                     output):
    run_id = producer.submit(Pipeline(name=f"parent_{policy}", steps=[
        _child("risky", "child_boom", **fields)]), {})
    run = producer.wait(run_id, timeout=60)
    child = producer.status(child_run_id(run_id, "risky"))
    assert child.status == "failed" and "exploded" in child.error
    assert run.status == status, run.error
    step = producer.store.get_step(run_id, "risky")
    if status == "failed":
        assert run.error.startswith("risky: child run ") and "exploded" in run.error
        assert step.status == "failed" and child.id in step.error
    else:
        assert run.output == output and step.output == output
        assert child.id in step.detail["child_error"] and "exploded" in step.detail["child_error"]


def test_an_input_the_child_refuses_fails_the_step_and_starts_nothing(producer, fake):
    run_id = producer.submit(Pipeline(name="parent_bad_input", steps=[
        _child("ask", "child_echo", input={"text": ""})]), {})  # child_echo wants minLength 1
    run = producer.wait(run_id, timeout=60)
    assert run.status == "failed"
    assert "input for pipeline 'child_echo' refused" in run.error and "text" in run.error
    assert producer.store.children(run_id) == {}
    assert _run_or_none(producer, child_run_id(run_id, "ask")) is None


def test_the_parent_holds_no_task_while_its_child_runs(producer, fake):
    run_id = producer.submit(Pipeline(name="parent_parked", steps=[
        _child("slow", "child_nap", input={"seconds": 2})]), {})
    child_id = child_run_id(run_id, "slow")
    eventually(lambda: getattr(producer.store.get_step(child_id, "nap"), "status", "") ==
              "running")
    parked = eventually(lambda: getattr(producer.store.get_step(run_id, "slow"), "status", "")
                       == "waiting")
    assert parked and producer.status(run_id).status == "waiting"
    store = producer.store
    assert store.redis.zscore(store.keys.leases, f"{run_id}|slow") is None  # no lease held
    active = producer.app.control.inspect(timeout=3).active() or {}
    assert active, "no worker answered"
    runs_in_flight = {t["kwargs"].get("step", {}).get("run_id") or t["kwargs"].get("run_id")
                      for tasks in active.values() for t in tasks}
    assert child_id in runs_in_flight  # the child's nap, on the main worker
    assert run_id not in runs_in_flight
    assert active.get(f"children@{socket.gethostname()}") == []  # its worker is idle
    assert producer.wait(run_id, timeout=60).status == "succeeded"


def test_cancelling_the_parent_cancels_its_children_and_theirs(producer, fake):
    run_id = producer.submit(Pipeline(name="parent_cancel", steps=[
        _child("family", "nest_nap")]), {})
    child_id = child_run_id(run_id, "family")
    grandchild_id = child_run_id(child_id, "inner")
    eventually(lambda: getattr(producer.store.get_step(grandchild_id, "nap"), "status", "") ==
              "running")
    assert producer.cancel(run_id, "enough")

    assert producer.status(run_id).status == "cancelled"
    child, grandchild = producer.status(child_id), producer.status(grandchild_id)
    assert child.status == grandchild.status == "cancelled"
    assert child.error == f"its parent run {run_id} cancelled"
    assert grandchild.error == f"its parent run {child_id} cancelled"
    store = producer.store
    assert not store.redis.hexists(store.keys.park_sig, f"{child_id}|inner")  # never resumed


def test_a_parallel_of_three_children_parks_each_branch_and_joins_them(producer, fake,
                                                                       tmp_path):
    words = [uuid.uuid4().hex[:6] for _ in range(3)]
    fan = Parallel(id="fan", aggregate=Aggregate(method="merge"), sections=[
        _child(f"c{i}", "child_echo", input={"text": word}) for i, word in enumerate(words)])
    run_id = producer.submit(Pipeline(name="parent_fan", steps=[fan]), {})
    run = producer.wait(run_id, timeout=60)
    assert run.status == "succeeded", run.error

    children = producer.store.children(run_id)
    assert children == {f"fan/c{i}": child_run_id(run_id, f"fan/c{i}") for i in range(3)}
    for i, word in enumerate(words):
        child = producer.status(children[f"fan/c{i}"])
        assert child.status == "succeeded" and child.input == {"text": word}
        assert run.output[f"c{i}"] == child.output
    assert len(set(children.values())) == 3
    _the_views_show_the_family(run_id, children, tmp_path / "report.html")


def _the_views_show_the_family(run_id: str, children: dict[str, str], page: Path) -> None:
    """`show` nests each child under its parent, `status` names them, `runs` marks them, the
    HTML report names a step's child run."""
    from typer.testing import CliRunner

    from legato.cli import app
    from legato.settings import get_settings

    get_settings.cache_clear()  # the CLI reads this process's settings: this stack's, not an
    # earlier test module's

    def cli(*args: str) -> str:
        done = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
        assert done.exit_code == 0, done.output
        return done.stdout

    shown = cli("show", run_id)
    assert shown.index(run_id) < min(shown.index(f"run {c}") for c in children.values())
    for path, child in children.items():
        assert f"child of run {run_id}, step {path}" in shown
        assert f"child run {child}" in shown  # the parent's step names its child
    tree = json.loads(cli("show", run_id, "--json"))
    assert {p: t["run"]["id"] for p, t in tree["children"].items()} == children
    status = cli("status", run_id)
    assert all(f"↳ step {p}: child run {c} (succeeded)" in status for p, c in children.items())
    listed = cli("runs", "--limit", "10")
    assert "↳ child_echo" in listed
    cli("report", run_id, "--html", str(page))
    assert all(f"child run {c}" in page.read_text() for c in children.values())


def test_nesting_deeper_than_the_limit_fails_with_a_clear_error(producer, fake):
    run_id = producer.submit(Pipeline(name="parent_deep", steps=[_child("down", "deep_1")]), {})
    run = producer.wait(run_id, timeout=60)
    assert run.status == "failed"
    assert "LEGATO_MAX_PIPELINE_DEPTH" in run.error
    level1 = producer.status(child_run_id(run_id, "down"))
    level2 = producer.status(child_run_id(level1.id, "down"))
    assert (level1.depth, level2.depth) == (1, 2) and level2.status == "failed"
    step = producer.store.get_step(level2.id, "down")
    assert step.error == ("child pipeline 'deep_3' would run 3 levels deep, over the limit of "
                          "2 (LEGATO_MAX_PIPELINE_DEPTH)")
    assert _run_or_none(producer, child_run_id(level2.id, "down")) is None  # never started


def test_a_cycle_or_an_unknown_child_is_refused_at_submit_and_nothing_is_written(producer):
    store = producer.store
    before = store.redis.zcard(store.keys.runs)
    with pytest.raises(SpecError, match="a cycle of child pipelines: cycle_a -> cycle_b"):
        producer.submit("cycle_a", {})
    with pytest.raises(SpecError, match=r"steps\[0\]\.pipeline: unknown pipeline 'nope'"):
        producer.submit(Pipeline(name="parent_unknown", steps=[_child("x", "nope")]), {})
    assert store.redis.zcard(store.keys.runs) == before


@pytest.fixture
def kill_workers(stack_env, tmp_path, services):
    """Workers for KILL_QUEUE with short leases: start one, kill it, start a rescuer."""
    def start(name: str) -> processes.Service:
        env = {**_child_env(stack_env), **FAST_RECOVERY}
        return services(processes.worker(f"{name}-{uuid.uuid4().hex[:6]}", [KILL_QUEUE],
                                         env=env, concurrency=4, log_dir=tmp_path))

    return start


def test_a_worker_killed_between_starting_the_child_and_parking_starts_no_second_child(
        producer, fake, kill_workers):
    """Writes are paused the moment the child's record appears, so the parent's worker is
    caught before it parks (its park is a write), and killed there. The step is sent again
    after its lease runs out; the new delivery finds the child it started and parks on it."""
    store = producer.store
    victim = kill_workers("victim")
    run_id = producer.submit(Pipeline(name="parent_killed", steps=[
        _child("slow", "child_nap", queue=KILL_QUEUE, input={"seconds": 1.5})]), {})
    child_id = child_run_id(run_id, "slow")
    eventually(lambda: store.redis.exists(store.keys.run(child_id)), every=0.0005)
    store.redis.execute_command("CLIENT", "PAUSE", "3000", "WRITE")
    try:
        victim.signal(signal.SIGKILL)
    finally:
        store.redis.execute_command("CLIENT", "UNPAUSE")
    caught = store.get_step(run_id, "slow").status == "running"  # killed before it parked
    kill_workers("rescuer")

    run = producer.wait(run_id, timeout=60)
    assert run.status == "succeeded", run.error
    assert caught
    assert store.children(run_id) == {"slow": child_id}
    child = producer.status(child_id)
    assert child.status == "succeeded"
    assert fake.stats()["by_step"][f"{child_id}/after"] == 1  # the child's steps ran once
    step = store.get_step(run_id, "slow")
    assert step.output == child.output
    assert step.attempt >= 2  # killed; sent again (and parked, then resumed, if the child
    # had not ended by then)
