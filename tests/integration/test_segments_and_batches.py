"""Several steps in one task, each still journaled: chain segments and vote batches, end to end."""

from __future__ import annotations

from legato import Legato, Llm, Parallel, Pipeline
from legato.spec import Aggregate, ModelConfig, Vote
from tests.conftest import eventually


def _chain(n: int, **extra) -> Pipeline:
    steps = [Llm(id="s0", model="small", prompt="Start from {{ input.text }}")]
    steps += [Llm(id=f"s{i}", model="small", prompt=f"Go on: {{{{ outputs.s{i - 1} }}}}")
              for i in range(1, n)]
    return Pipeline(name=f"chain_{n}", steps=steps, **extra)


def test_a_chain_of_llm_steps_runs_as_one_task_journaling_every_step(legato: Legato, fake):
    run = legato.wait(legato.submit(_chain(4), {"text": "segments"}), timeout=30)

    assert run.status == "succeeded", run.error
    steps = legato.steps(run.id)
    assert [s.path for s in steps] == ["s0", "s1", "s2", "s3"]
    assert len({s.task_id for s in steps}) == 1  # one Celery task ...
    assert all(s.status == "succeeded" and s.attempt == 1 for s in steps)  # ... four records
    assert all(a.ended_at <= b.started_at for a, b in zip(steps, steps[1:], strict=False))
    assert "Go on" in steps[3].output and run.output == steps[3].output  # each read the last
    assert fake.stats()["by_step"] == {f"{run.id}/s{i}": 1 for i in range(4)}


def test_a_segment_sent_again_runs_nothing_twice(legato: Legato, fake):
    """A redelivered segment (its worker died after some steps, say) replays from the journal."""
    pipeline = _chain(3)
    run = legato.wait(legato.submit(pipeline, {"text": "again"}), timeout=30)
    assert run.status == "succeeded", run.error
    first = {s.path: s.output for s in legato.steps(run.id)}
    envelopes = [{"run_id": run.id, "spec_hash": run.spec_hash, "node": f"s{i}",
                  "path": f"s{i}"} for i in range(3)]

    segment = legato.app.signature("legato.segment", kwargs={"steps": envelopes},
                                   queue="legato.llm")
    result = segment.apply_async(ignore_result=False).get(timeout=30)

    assert result["status"] == "succeeded" and result["path"] == "s2"
    assert {s.path: s.output for s in legato.steps(run.id)} == first
    assert fake.stats()["by_step"] == {f"{run.id}/s{i}": 1 for i in range(3)}


def test_a_failing_step_stops_its_segment_and_fails_the_run(legato: Legato, fake):
    fake.script({"faults": [{"kind": "status", "code": 400, "body": "no such thing",
                             "match": {"contains": "Go on"}}]})
    run = legato.wait(legato.submit(_chain(3), {"text": "stop"}), timeout=30)

    assert run.status == "failed"
    assert run.error.startswith("s1: HTTP 400")
    steps = {s.path: s for s in legato.steps(run.id)}
    assert steps["s0"].status == "succeeded" and steps["s1"].status == "failed"
    assert "s2" not in steps


def test_a_segment_retried_after_a_model_outage_redoes_only_the_unfinished_steps(
        legato: Legato, fake, fake_model):
    # One HTTP attempt per call, so the outage reaches the task: the segment is retried as a
    # whole (LEGATO_STEP_RETRY_SECONDS is 0.2 in the session) and the first step is memoized.
    once = ModelConfig(base_url=fake_model, model="smollm2", max_attempts=1)
    pipeline = Pipeline(name="outage_segment", models={"once": once}, steps=[
        Llm(id="a", model="once", prompt="first {{ input.text }}"),
        Llm(id="b", model="once", prompt="second {{ outputs.a }}"),
        Llm(id="c", model="once", prompt="third {{ outputs.b }}"),
    ])
    fake.script({"faults": [{"kind": "status", "code": 503, "times": 2,
                             "match": {"contains": "second"}}]})
    run = legato.wait(legato.submit(pipeline, {"text": "outage"}), timeout=30)

    assert run.status == "succeeded", run.error
    assert fake.stats()["by_step"] == {f"{run.id}/a": 1, f"{run.id}/b": 3, f"{run.id}/c": 1}
    steps = {s.path: s for s in legato.steps(run.id)}
    assert steps["a"].attempt == 1 and steps["b"].attempt == 3 and steps["c"].attempt == 1
    assert "third" in run.output


def test_a_segment_waiting_to_retry_a_model_call_holds_up_no_other_segment(
        legato: Legato, fake, fake_model):
    # A segment's steps run on the worker's event loop (legato.bridge): the gateway's wait before
    # its retry is awaited there, so other segments go on meanwhile. A blocking sleep on that
    # thread would hold every one of them for the whole wait.
    patient = ModelConfig(base_url=fake_model, model="smollm2", max_attempts=2)
    fake.script({"faults": [{"kind": "status", "code": 429, "retry_after": 3, "times": 1,
                             "match": {"contains": "slow"}}]})
    slow = legato.submit(Pipeline(name="slow_segment", models={"patient": patient}, steps=[
        Llm(id="a", model="patient", prompt="slow {{ input.text }}")]), {"text": "x"})
    eventually(lambda: fake.stats()["by_step"].get(f"{slow}/a") == 1)  # it is waiting now
    fast = [legato.wait(legato.submit(_chain(2), {"text": f"fast {i}"}), timeout=30)
            for i in range(3)]
    slow_run = legato.wait(slow, timeout=30)

    assert slow_run.status == "succeeded" and all(r.status == "succeeded" for r in fast)
    assert fake.stats()["by_step"][f"{slow}/a"] == 2
    waited_until = legato.steps(slow)[0].ended_at
    assert all(r.finished_at < waited_until for r in fast)
    assert max(r.finished_at - r.created_at for r in fast) < 2.0  # not held for the 3 s wait


def test_a_vote_runs_its_members_concurrently_in_batches(legato: Legato, fake):
    fake.script({"latency_ms": 300})
    vote = Parallel(id="fan", vote=Vote(n=40, step=Llm(id="call", model="small",
                                                       prompt="Vote on {{ input.text }}")),
                    aggregate=Aggregate(method="concat"))
    run = legato.wait(legato.submit(Pipeline(name="fan", steps=[vote]), {"text": "x"}),
                      timeout=60)

    assert run.status == "succeeded", run.error
    members = [s for s in legato.steps(run.id) if s.path.startswith("fan/call[")]
    assert sorted(s.path for s in members) == sorted(f"fan/call[{i}]" for i in range(40))
    assert all(s.status == "succeeded" for s in members)
    assert len({s.task_id for s in members}) == 1  # 40 < LEGATO_BATCH_SIZE: one task
    stats = fake.stats()
    assert stats["max_in_flight"] >= 20  # held at once in that task, not one after another
    assert run.usage.calls == 40
    assert run.output == "\n\n".join(["[fake:smollm2] Vote on x"] * 40)
