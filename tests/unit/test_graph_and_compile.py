"""The step index (paths, what each node reads and publishes, queues) and the canvas it compiles to.

Signatures are only built, never applied: no broker is touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from celery import Celery
from celery.canvas import Signature, _chain, _chord, group

from legato import graph
from legato.compile import CONTROL, LLM, TOOLS, Compiler
from legato.settings import get_settings
from legato.spec import (
    Aggregate,
    Chain,
    Classifier,
    Gate,
    Llm,
    ModelCall,
    Orchestrate,
    Parallel,
    Pipeline,
    Route,
    Tool,
    Vote,
)

SECRET_PROMPT = "PROMPT-TEXT-THAT-MUST-NOT-TRAVEL"

PIPELINE = Pipeline(name="shapes", steps=[
    Chain(id="c", queue="q.chain", steps=[
        Llm(id="a", model="m", prompt=SECRET_PROMPT),
        Tool(id="t", tool="word_count", args={"text": "{{ outputs.a }}"}),
    ]),
    Route(id="r", classifier=Classifier(rule="'x'"), branches={
        "x": Llm(id="x", model="m", prompt="{{ outputs.c }}", queue="q.x"),
        "y": Chain(id="y", steps=[Llm(id="y1", model="m", prompt="p"),
                                  Llm(id="y2", model="m", prompt="{{ outputs.y1 }}")]),
    }),
    Parallel(id="p", sections=[Llm(id="s1", model="m", prompt="p"),
                               Llm(id="s2", model="m", prompt="{{ outputs['t'] }}")]),
    Parallel(id="v", queue="q.v", vote=Vote(n=3, step=Llm(id="judge", model="m", prompt="p"))),
    Orchestrate(id="o", planner=ModelCall(model="m", prompt="plan {{ outputs.r }}"),
                worker=ModelCall(model="m", prompt="w"),
                synthesizer=ModelCall(model="m", prompt="s")),
])


@pytest.fixture(scope="module")
def app() -> Celery:
    return Celery("t")  # no broker is used: signatures are built, not sent


def _compiler(app: Celery) -> Compiler:
    return Compiler(app, "RUN", "HASH")


def tasks_in_order(sig: Signature) -> Iterator[Signature]:
    """Every task signature of a canvas, in the order they would run (a chord: header, body)."""
    if isinstance(sig, _chord):
        for member in sig.tasks:
            yield from tasks_in_order(member)
        yield from tasks_in_order(sig.body)
    elif isinstance(sig, _chain | group):
        for member in sig.tasks:
            yield from tasks_in_order(member)
    else:
        yield sig


# -- graph -------------------------------------------------------------------------------------


def test_index_paths_are_ids_joined_by_slashes() -> None:
    assert list(graph.index(PIPELINE)) == [
        "c", "c/a", "c/t",
        "r", "r/x", "r/y", "r/y/y1", "r/y/y2",
        "p", "p/s1", "p/s2",
        "v", "v/judge",
        "o",
    ]
    assert graph.node(PIPELINE, "r/y/y2").step.id == "y2"


def _publishes(path: str) -> tuple[str, ...]:
    return graph.node(PIPELINE, path).publishes


def test_the_last_step_of_a_chain_publishes_under_the_chain_id() -> None:
    assert _publishes("c") == ()
    assert _publishes("c/a") == ("a",)
    assert _publishes("c/t") == ("t", "c")


def test_route_branches_publish_under_the_route_id() -> None:
    assert _publishes("r") == ()
    assert _publishes("r/x") == ("x", "r")
    assert _publishes("r/y") == ()  # a chain branch: its last step publishes for it and the route
    assert _publishes("r/y/y1") == ("y1",)
    assert _publishes("r/y/y2") == ("y2", "y", "r")


def test_parallel_publishes_its_own_id_and_vote_members_nothing() -> None:
    assert _publishes("p") == ("p",)
    assert _publishes("p/s1") == ("s1",)
    assert _publishes("v") == ("v",)
    assert _publishes("v/judge") == ()
    assert _publishes("o") == ("o",)


def test_reads_are_the_outputs_a_step_templates_name() -> None:
    assert graph.node(PIPELINE, "c/t").reads == ("a",)
    assert graph.node(PIPELINE, "r/x").reads == ("c",)
    assert graph.node(PIPELINE, "p/s2").reads == ("t",)
    assert graph.node(PIPELINE, "o").reads == ("r",)
    assert graph.node(PIPELINE, "c/a").reads == ()


def test_queue_is_inherited_from_the_nearest_enclosing_step() -> None:
    queues = {path: node.queue for path, node in graph.index(PIPELINE).items()}
    assert queues["c"] == queues["c/a"] == queues["c/t"] == "q.chain"
    assert queues["r"] is None and queues["r/x"] == "q.x" and queues["r/y/y1"] is None
    assert queues["v"] == queues["v/judge"] == "q.v"


def test_gate_templates_count_as_reads() -> None:
    gated = Pipeline(name="g", steps=[
        Llm(id="a", model="m", prompt="p"),
        Llm(id="b", model="m", prompt="p", gate=Gate(check="output != outputs.a")),
    ])
    assert graph.node(gated, "b").reads == ("a",)


# -- compile -----------------------------------------------------------------------------------


def test_llm_and_tool_steps_are_tasks_on_their_kind_queue(app: Celery) -> None:
    llm = _compiler(app).step(Llm(id="a", model="m", prompt="p"), "a")
    tool = _compiler(app).step(Tool(id="t", tool="word_count"), "t")
    assert (llm.task, llm.options["queue"]) == ("legato.llm", LLM)
    assert (tool.task, tool.options["queue"]) == ("legato.tool", TOOLS)
    assert llm.kwargs == {"step": {"run_id": "RUN", "spec_hash": "HASH", "node": "a",
                                   "path": "a"}}


def test_a_steps_own_queue_wins(app: Celery) -> None:
    sig = _compiler(app).step(Llm(id="a", model="m", prompt="p", queue="gpu"), "a", "outer")
    assert sig.options["queue"] == "gpu"


def test_a_chain_queue_is_inherited_by_its_steps(app: Celery) -> None:
    sig = _compiler(app).step(PIPELINE.steps[0], "c")
    assert isinstance(sig, _chain)
    assert [(s.task, s.options["queue"], s.kwargs["step"]["path"]) for s in sig.tasks] == [
        ("legato.llm", "q.chain", "c/a"),
        ("legato.tool", "q.chain", "c/t"),
    ]


def test_a_route_is_one_router_task(app: Celery) -> None:
    by_rule = _compiler(app).step(PIPELINE.steps[1], "r")
    assert (by_rule.task, by_rule.options["queue"]) == ("legato.route", CONTROL)
    by_model = Route(id="r", classifier=Classifier(model="m", prompt="pick"),
                     branches={"x": Llm(id="x", model="m", prompt="p")})
    assert _compiler(app).step(by_model, "r").options["queue"] == LLM


def test_a_route_branch_runs_on_the_branch_queue_else_the_routes(app: Celery) -> None:
    route = PIPELINE.steps[1]
    assert isinstance(route, Route)
    x = _compiler(app).branch(route, "r", "x", "q.route")
    assert (x.task, x.options["queue"], x.kwargs["step"]["path"]) == ("legato.llm", "q.x", "r/x")
    y = _compiler(app).branch(route, "r", "y", "q.route")  # two llm steps: one segment
    (segment,) = y.tasks
    assert (segment.task, segment.options["queue"]) == ("legato.segment", "q.route")
    assert [e["path"] for e in segment.kwargs["steps"]] == ["r/y/y1", "r/y/y2"]


def test_parallel_sections_become_a_chord_with_an_aggregate_body(app: Celery) -> None:
    sig = _compiler(app).step(PIPELINE.steps[2], "p")
    assert isinstance(sig, _chord)
    assert [s.kwargs["step"]["path"] for s in sig.tasks] == ["p/s1", "p/s2"]
    assert all(s.task == "legato.llm" and s.options["queue"] == LLM for s in sig.tasks)
    assert sig.body.task == "legato.aggregate"
    assert sig.body.options["queue"] == CONTROL
    assert sig.body.kwargs["step"]["path"] == "p"


def test_an_llm_aggregate_runs_on_the_llm_queue(app: Celery) -> None:
    step = Parallel(id="p", sections=[Llm(id="s", model="m", prompt="p")],
                    aggregate=Aggregate(method="llm", model="m", prompt="combine"))
    assert _compiler(app).step(step, "p").body.options["queue"] == LLM


def test_a_vote_becomes_batches_of_indexed_members_of_one_node(app: Celery) -> None:
    sig = _compiler(app).step(PIPELINE.steps[3], "v")
    assert isinstance(sig, _chord) and len(sig.tasks) == 1  # 3 members: one batch
    (batch,) = sig.tasks
    assert (batch.task, batch.options["queue"]) == ("legato.llm_batch", "q.v")  # inherited
    envelopes = batch.kwargs["steps"]
    assert [e["path"] for e in envelopes] == ["v/judge[0]", "v/judge[1]", "v/judge[2]"]
    assert [e["index"] for e in envelopes] == [0, 1, 2]
    assert {e["node"] for e in envelopes} == {"v/judge"}
    assert (sig.body.task, sig.body.kwargs["step"]["path"]) == ("legato.aggregate", "v")


def test_a_big_vote_is_split_into_batches_of_the_batch_size(
        app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEGATO_BATCH_SIZE", "4")
    get_settings.cache_clear()
    try:
        step = Parallel(id="v", vote=Vote(n=10, step=Llm(id="j", model="m", prompt="p")))
        sig = _compiler(app).step(step, "v")
    finally:
        monkeypatch.delenv("LEGATO_BATCH_SIZE")
        get_settings.cache_clear()
    sizes = [len(b.kwargs["steps"]) for b in sig.tasks]
    assert sizes == [4, 4, 2]
    paths = [e["path"] for b in sig.tasks for e in b.kwargs["steps"]]
    assert paths == [f"v/j[{i}]" for i in range(10)]


def test_a_quorum_vote_or_an_unfused_pipeline_gets_a_task_per_member(app: Celery) -> None:
    quorum = Parallel(id="v", vote=Vote(n=3, quorum=2, step=Llm(id="j", model="m", prompt="p")))
    unfused = Compiler(app, "RUN", "HASH", fuse=False)
    for sig in (_compiler(app).step(quorum, "v"), unfused.step(PIPELINE.steps[3], "v")):
        assert [s.task for s in sig.tasks] == ["legato.llm"] * 3
        assert [s.kwargs["step"]["index"] for s in sig.tasks] == [0, 1, 2]
    assert quorum.vote is not None and _compiler(app).step(quorum, "v").tasks[0].kwargs[
        "step"]["quorum"] == 2


def test_orchestrate_is_a_plan_task_then_workers_and_a_synthesizer(app: Celery) -> None:
    step = PIPELINE.steps[4]
    assert isinstance(step, Orchestrate)
    plan = _compiler(app).step(step, "o")
    assert (plan.task, plan.options["queue"]) == ("legato.plan", LLM)
    assert plan.kwargs["step"]["node"] == "o" and plan.kwargs["step"]["path"] == "o/plan"
    subtasks = [{"title": "one", "instructions": "i"}, {"title": "two", "instructions": "j"}]
    fan = _compiler(app).workers(step, "o", subtasks, None)
    assert isinstance(fan, _chord)
    (batch,) = fan.tasks  # the workers run concurrently in one batch task
    assert (batch.task, batch.options["queue"]) == ("legato.llm_batch", LLM)
    assert [e["path"] for e in batch.kwargs["steps"]] == ["o/worker[0]", "o/worker[1]"]
    # The subtasks' text (model output) stays in the journal: messages carry the round only.
    assert [e["item"] for e in batch.kwargs["steps"]] == [{"round": 0}] * len(subtasks)
    later = _compiler(app).workers(step, "o", [*subtasks, {"title": "3"}], "q.o", start=2,
                                   round_no=1)
    assert [e["path"] for e in later.tasks[0].kwargs["steps"]] == ["o/worker[2]"]
    unfused = Compiler(app, "RUN", "HASH", fuse=False).workers(step, "o", subtasks, None)
    assert [s.task for s in unfused.tasks] == ["legato.llm", "legato.llm"]
    assert fan.body.task == "legato.synthesize"
    assert fan.body.kwargs["step"]["item"] == {"round": 0}
    assert "instructions" not in json.dumps(fan)


def test_the_run_canvas_runs_every_step_then_finalize(app: Celery) -> None:
    canvas = _whole_run(app, PIPELINE)
    order = [(s.task, s.options.get("queue")) for s in tasks_in_order(canvas)]
    assert order == [
        ("legato.llm", "q.chain"), ("legato.tool", "q.chain"),
        ("legato.route", CONTROL),
        ("legato.llm", LLM), ("legato.llm", LLM), ("legato.aggregate", CONTROL),
        ("legato.llm_batch", "q.v"),
        ("legato.aggregate", "q.v"),
        ("legato.plan", LLM),
        ("legato.finalize", CONTROL),
    ]
    last = list(tasks_in_order(canvas))[-1]
    assert last.kwargs == {"run_id": "RUN", "spec_hash": "HASH"}


def _llms(*specs: tuple[str, str | None]) -> list[Llm]:
    return [Llm(id=i, model="m", prompt="p", queue=q) for i, q in specs]


def test_consecutive_llm_steps_on_one_queue_fuse_and_the_last_segment_finalizes(
        app: Celery) -> None:
    steps: list = [*_llms(("a", None), ("b", None)), Tool(id="t", tool="word_count"),
                   *_llms(("c", None), ("d", "gpu"), ("e", "gpu"))]
    canvas = _whole_run(app, Pipeline(name="f", steps=steps))
    shape = [(s.task, s.options.get("queue"),
              [e["path"] for e in s.kwargs["steps"]] if "steps" in s.kwargs else
              s.kwargs["step"]["path"], s.kwargs.get("finalize"))
             for s in tasks_in_order(canvas)]
    assert shape == [
        ("legato.segment", LLM, ["a", "b"], None),
        ("legato.tool", TOOLS, "t", None),
        ("legato.llm", LLM, "c", None),  # alone on its queue, not last: a plain task
        ("legato.segment", "gpu", ["d", "e"], True),  # ends the run: no legato.finalize
    ]


def test_fuse_false_keeps_a_task_per_step_and_a_finalize_task(app: Celery) -> None:
    spec = Pipeline(name="f", fuse=False, steps=_llms(("a", None), ("b", None)))
    canvas = _whole_run(app, spec)
    assert [s.task for s in tasks_in_order(canvas)] == [
        "legato.llm", "legato.llm", "legato.finalize"]


def test_messages_carry_only_ids(app: Celery) -> None:
    canvas = _whole_run(app, PIPELINE)
    allowed = {"run_id", "spec_hash", "node", "path", "index"}
    for sig in tasks_in_order(canvas):
        if sig.task == "legato.finalize":
            continue
        envelopes = sig.kwargs["steps"] if "steps" in sig.kwargs else [sig.kwargs["step"]]
        assert set(sig.kwargs) <= {"step", "steps", "finalize", "then"}
        for envelope in envelopes:
            assert set(envelope) <= allowed, sig.kwargs
            assert envelope["run_id"] == "RUN" and sig.args == ()
    wire = json.dumps(canvas)  # a canvas is a dict: this is what would be sent
    assert SECRET_PROMPT not in wire and "word_count" not in wire


def test_every_task_shows_its_run_and_step_not_a_repr_of_its_envelopes(app: Celery) -> None:
    """What Flower and task events show as a task's kwargs: `run=<id> step=<path>`."""
    shown = {}
    for sig in tasks_in_order(_whole_run(app, PIPELINE)):
        if sig.task == "legato.finalize":
            assert sig.options["kwargsrepr"] == "run=RUN step=(finalize)"
            continue
        envelopes = sig.kwargs["steps"] if "steps" in sig.kwargs else [sig.kwargs["step"]]
        first, last = envelopes[0]["path"], envelopes[-1]["path"]
        step = first if first == last else f"{first}..{last}"
        assert sig.options["kwargsrepr"] == f"run=RUN step={step}", sig.task
        shown[sig.task] = step
    assert set(shown) >= {"legato.llm", "legato.tool", "legato.route", "legato.llm_batch",
                          "legato.plan", "legato.aggregate"}


def _whole_run(app: Celery, spec: Pipeline) -> Signature:
    """A run's stages (sent one at a time, tasks/stages.py) as one chain, to read its shape."""
    from celery import chain

    return chain(*_compiler(app).stages(spec))


def test_a_run_is_sent_one_stage_at_a_time_each_naming_the_next(app: Celery) -> None:
    compiler = _compiler(app)
    first = compiler.run(PIPELINE)
    stages = compiler.stages(PIPELINE)
    assert [s.task for s in tasks_in_order(first)] == [s.task for s in tasks_in_order(stages[0])]
    for i, stage in enumerate(stages[:-1]):  # each stage's last task names the next stage
        assert list(tasks_in_order(stage))[-1].kwargs["then"] == {"at": i + 1}
    assert "then" not in list(tasks_in_order(stages[-1]))[-1].kwargs
    # no stage's message holds another stage's steps
    seen = [{e["path"] for t in tasks_in_order(s)
             for e in (t.kwargs.get("steps") or [t.kwargs.get("step")]) if e} for s in stages]
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1:])
