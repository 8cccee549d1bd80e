"""Record and replay: a run recorded through the response cache reproduces byte-identical
outputs with its model server stopped, and a replay that meets an unrecorded call says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from legato import Legato, Llm, Parallel, Pipeline
from legato.local import processes
from legato.models.replay import replay
from legato.spec import Aggregate, ModelConfig, Vote

ROOT = Path(__file__).resolve().parents[2]


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def pipeline(base_url: str, cache: str) -> Pipeline:
    cfg = ModelConfig(base_url=base_url, model="recorded", structured_output="json_object")
    schema = {"type": "object", "properties": {"mood": {"type": "string"}}, "required": ["mood"]}
    return Pipeline(name="recorded", models={"m": cfg}, cache=cache, steps=[
        Llm(id="draft", model="m", prompt="Draft about {{ input.topic }}"),
        Parallel(id="moods", vote=Vote(n=3, step=Llm(
            id="mood", model="m", prompt="Mood of {{ outputs.draft }}", output_schema=schema)),
            aggregate=Aggregate(method="majority")),
        Llm(id="final", model="m", prompt="Finish {{ outputs.draft }} / {{ outputs.moods }}"),
    ])


def test_a_recorded_run_replays_identically_with_the_model_server_stopped(
    legato: Legato, stack_env, tmp_path
):
    private = processes.fake_model(log_dir=tmp_path)
    with private:
        url = processes.fake_model_url(private)
        recorded = legato.wait(legato.submit(pipeline(url, "read-write"), {"topic": "tides"}),
                               timeout=60)
        unrecorded = legato.wait(legato.submit(pipeline(url, "off"), {"topic": "moons"}),
                                 timeout=60)
    assert not private.running()
    assert recorded.status == unrecorded.status == "succeeded", recorded.error

    result = replay(legato, recorded.id, timeout=60)
    assert result.identical, result.differences
    assert result.replay.status == "succeeded"
    assert canonical(result.replay.output) == canonical(recorded.output)
    before = {s.path: canonical(s.output) for s in legato.steps(recorded.id)}
    after = {s.path: canonical(s.output) for s in legato.steps(result.replay.id)}
    assert before == after and len(before) == 6
    calls = [c for s in legato.steps(result.replay.id) for c in s.detail.get("model_calls", [])]
    assert len(calls) == 5 and all("cached" in c for c in calls)
    assert result.replay.usage.calls == 0 and recorded.usage.calls == 5

    missed = replay(legato, unrecorded.id, timeout=60)  # recorded with the cache off
    assert not missed.identical and missed.replay.status == "failed"
    assert "replay: no recorded response" in missed.replay.error

    cli = subprocess.run([sys.executable, "-m", "legato.cli", "replay", recorded.id],
                         cwd=ROOT, env={**os.environ, **stack_env}, capture_output=True,
                         text=True, timeout=90)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "identical" in cli.stdout
    cli = subprocess.run([sys.executable, "-m", "legato.cli", "replay", unrecorded.id],
                         cwd=ROOT, env={**os.environ, **stack_env}, capture_output=True,
                         text=True, timeout=90)
    assert cli.returncode == 1 and "differs" in cli.stdout
