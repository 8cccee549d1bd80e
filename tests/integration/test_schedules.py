"""Schedules end to end: real `legato beat` processes (Celery beat with Legato's scheduler)
against the test stack's Redis and workers, with one-second intervals."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from legato.client import Legato
from legato.envelope import UNFINISHED, RunRecord
from legato.local import processes
from tests.conftest import ROOT, eventually

# A pipeline whose one step goes to a queue no worker serves: its runs stay unfinished.
STUCK = """
input_schema: {type: object}
steps:
  - {kind: llm, id: wait, model: small, queue: legato.test.nobody, prompt: "never answered"}
"""
SUBMITTED = re.compile(r"schedule (\S+) tick (\S+): submitted run (\w+)")
TAKEN = re.compile(r"schedule (\S+) tick (\S+): taken by another beat")


@pytest.fixture
def beat_env(stack_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    for name in ("models.yaml", "summarize.yaml"):
        shutil.copy(ROOT / "pipelines" / name, pipelines / name)
    (pipelines / "stuck.yaml").write_text(STUCK)
    return {**stack_env, "LEGATO_PIPELINES_DIR": str(pipelines),
            "LEGATO_SCHEDULES_FILE": str(tmp_path / "schedules.yaml")}


@pytest.fixture
def beats(beat_env: dict[str, str], tmp_path: Path, services: Callable[..., processes.Service]
          ) -> Callable[..., processes.Service]:
    def start(name: str, *, wait: bool = True) -> processes.Service:
        return services(processes.Service(
            name, [sys.executable, "-m", "legato.cli", "beat"], env=beat_env,
            ready=r"legato beat: \d+ schedules? from", log_dir=tmp_path), timeout=90, wait=wait)

    return start


def write(env: dict[str, str], text: str) -> None:
    Path(env["LEGATO_SCHEDULES_FILE"]).write_text(text)


def runs_of(legato: Legato, schedule: str) -> list[RunRecord]:
    return legato.runs(schedule=schedule, limit=1000)


def ticks_of(runs: list[RunRecord], schedule: str) -> list[str]:
    """The ticks the runs were made for, from their idempotency keys (schedule:<name>:<tick>)."""
    keys = [str(r.idempotency_key) for r in runs]
    assert all(k.startswith(f"schedule:{schedule}:") for k in keys), keys
    return sorted(k.removeprefix(f"schedule:{schedule}:") for k in keys)


def test_schedules_fire_at_their_interval_and_skip_while_their_previous_run_goes_on(
        legato, beats, beat_env, fake):
    uid = uuid.uuid4().hex[:8]
    runs, skip, allow = f"runs-{uid}", f"skip-{uid}", f"allow-{uid}"
    write(beat_env, f"""schedules:
  {runs}: {{pipeline: summarize, every: 1s, overlap: allow, input: {{text: scheduled work}}}}
  {skip}: {{pipeline: stuck, every: 1, overlap: skip}}
  {allow}: {{pipeline: stuck, every: 1, overlap: allow}}
""")
    beat = beats("beat")
    eventually(lambda: min(len(runs_of(legato, runs)), len(runs_of(legato, allow))) >= 4,
               timeout=90, every=0.2)
    beat.stop()

    made = runs_of(legato, runs)
    ticks = ticks_of(made, runs)
    assert len(set(ticks)) == len(ticks) == len(made), "one run a tick"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", t) for t in ticks)
    assert {r.schedule for r in made} == {runs} and {r.pipeline for r in made} == {"summarize"}
    for run in made:
        assert legato.wait(run.id, timeout=60).status == "succeeded"

    (only,) = runs_of(legato, skip)  # its first run never finishes: every later tick skipped
    assert only.status in UNFINISHED
    state = legato.store.schedule_state(skip)
    assert int(state["skipped"]) >= 2 and state["last_run"] == only.id
    assert len(runs_of(legato, allow)) >= 4  # allow: a run a tick, the earlier ones unfinished
    assert all(r.status in UNFINISHED for r in runs_of(legato, allow))

    listed = subprocess.run([sys.executable, "-m", "legato.cli", "runs", "--schedule", runs],
                            env={**os.environ, **beat_env, "COLUMNS": "200"},
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count(f"summarize ({runs})") == len(made)


def test_two_beats_never_fire_the_same_tick_twice(legato, beats, beat_env):
    name = f"twice-{uuid.uuid4().hex[:8]}"
    write(beat_env, f"schedules:\n  {name}: {{pipeline: stuck, every: 1, overlap: allow}}\n")
    first, second = beats("beat-1", wait=False), beats("beat-2", wait=False)
    first.wait_ready(90)
    second.wait_ready(90)
    both_up = len(runs_of(legato, name))
    eventually(lambda: len(runs_of(legato, name)) >= both_up + 4, timeout=90, every=0.2)
    first.stop()
    second.stop()
    logs = [first.log_path.read_text(), second.log_path.read_text()]
    submitted = [(m[1], m[2]) for log in logs for m in SUBMITTED.finditer(log) if m[1] == name]
    taken = [[m[2] for m in TAKEN.finditer(log) if m[1] == name] for log in logs]
    ticks = [tick for _, tick in submitted]
    assert len(ticks) == len(set(ticks)), "a tick was submitted twice"
    runs = runs_of(legato, name)
    assert len(runs) == len(submitted) and sorted(ticks) == ticks_of(runs, name)
    assert taken[0] or taken[1], "the two beats never met on a tick"
    mine = [{t for m in SUBMITTED.finditer(log) if m[1] == name for t in [m[2]]} for log in logs]
    assert set(taken[0]) <= mine[1] and set(taken[1]) <= mine[0]  # the other beat had them


def test_a_bad_schedules_file_stops_beat_in_one_line_naming_the_file_and_path(legato,
                                                                               beat_env):
    env, source = {**os.environ, **beat_env}, beat_env["LEGATO_SCHEDULES_FILE"]
    for argv, text, where in [
            (["beat"], '  nightly: {pipeline: summarize, cron: "0 25 * * *", input: {text: hi}}',
             "schedules.nightly.cron: '0 25 * * *' is not a cron expression"),
            (["beat", "--check"], "  nightly: {pipeline: summarize, every: 1, input: {txt: hi}}",
             "schedules.nightly.input: input for pipeline 'summarize' refused: text: Field "
             "required")]:
        write(beat_env, "schedules:\n" + text + "\n")
        done = subprocess.run([sys.executable, "-m", "legato.cli", *argv], env=env,
                              capture_output=True, text=True, timeout=90)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.startswith(f"error: {source}:{where}"), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert runs_of(legato, "nightly") == []


def test_celery_beat_with_the_scheduler_refuses_a_bad_file_too(legato, beat_env):
    write(beat_env, 'schedules:\n  nightly: {pipeline: summarize, cron: "x", input: {}}\n')
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "legato.workers.app", "beat",
                           "-S", "legato.workers.beat:Scheduler"],
                          env={**os.environ, **beat_env}, capture_output=True, text=True,
                          timeout=90)
    assert done.returncode != 0
    assert "schedules.nightly.cron" in done.stdout + done.stderr
    assert runs_of(legato, "nightly") == []

