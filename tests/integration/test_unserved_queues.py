"""Unserved queues are never silent: workers advertise what they consume; a step sent to a queue
no live worker serves shows on the run at once ("waiting for a worker on queue X since T") and
fails the run after LEGATO_UNSERVED_SECONDS with that reason; a worker that turns up in time
clears it; `legato validate` warns about queues a pipeline routes to that nobody serves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from legato import Llm, Pipeline
from legato.local import processes
from tests.conftest import eventually

ROOT = Path(__file__).resolve().parents[2]
UNSERVED_SECONDS = 4


@pytest.fixture(scope="module")
def sweeping_worker(stack_env, tmp_path_factory):
    """A worker whose sweeper gives unserved runs only a few seconds (on a queue of its own)."""
    env = {**stack_env, "LEGATO_UNSERVED_SECONDS": str(UNSERVED_SECONDS),
           "LEGATO_SWEEP_SECONDS": "0.5"}
    with processes.worker("sweeper", ["legato.test.sweeper"], env=env,
                          log_dir=tmp_path_factory.mktemp("sweeper")) as service:
        yield service


def _lonely(queue: str) -> Pipeline:
    return Pipeline(name="lonely", steps=[Llm(id="hello", model="small", prompt="Hi",
                                              queue=queue)])


def test_workers_advertise_the_queues_they_consume(legato, sweeping_worker):
    queues = ["legato.llm", "legato.branch.technical", "legato.test.sweeper", "nobody.here"]
    eventually(lambda: legato.store.served(["legato.test.sweeper"], now=time.time())
              ["legato.test.sweeper"])
    served = legato.store.served(queues, now=time.time())
    assert served == {"legato.llm": True, "legato.branch.technical": True,
                      "legato.test.sweeper": True, "nobody.here": False}


def test_a_step_on_an_unserved_queue_shows_at_once_then_fails_naming_it(
        legato, fake, sweeping_worker, stack_env):
    started = time.time()
    run_id = legato.submit(_lonely("legato.test.nobody"), {})
    waiting = legato.status(run_id)
    assert waiting.waiting_for == "legato.test.nobody" and waiting.status == "queued"
    assert waiting.waiting.startswith("waiting for a worker on queue legato.test.nobody since ")
    shown = subprocess.run([sys.executable, "-m", "legato.cli", "status", run_id], cwd=ROOT,
                           env={**os.environ, **stack_env}, capture_output=True, text=True,
                           timeout=30)
    assert "waiting for a worker on queue legato.test.nobody" in shown.stdout, shown.stdout
    run = legato.wait(run_id, timeout=30)
    assert run.status == "failed"
    assert run.error.startswith("no worker serves queue legato.test.nobody (waited "), run.error
    assert UNSERVED_SECONDS <= time.time() - started < UNSERVED_SECONDS + 10
    assert legato.status(run_id).waiting is None


def test_a_worker_that_turns_up_in_time_clears_the_wait(legato, fake, sweeping_worker,
                                                         stack_env, tmp_path):
    # A worker already up takes the queue on at run time (`celery control add_consumer`), the
    # way an operator would: starting a whole worker process can itself take longer than the
    # short unserved window this module's sweeper gives a run on a loaded machine.
    with processes.worker("standby", ["legato.test.standby"], env=stack_env, log_dir=tmp_path):
        run_id = legato.submit(_lonely("legato.test.late"), {})
        assert legato.status(run_id).waiting_for == "legato.test.late"
        replies = legato.app.control.add_consumer(
            "legato.test.late", reply=True, timeout=10,
            destination=[f"standby@{socket.gethostname()}"])
        assert replies and "add consumer" in str(replies), replies
        run = legato.wait(run_id, timeout=30)
    assert run.status == "succeeded", run.error
    assert run.waiting_for is None


def test_validate_warns_about_queues_no_worker_serves(stack_env, workers, tmp_path):
    spec = tmp_path / "lonely.yaml"
    spec.write_text("steps:\n  - {kind: llm, id: a, model: small, prompt: hi, "
                    "queue: legato.test.nobody}\n")
    checked = subprocess.run([sys.executable, "-m", "legato.cli", "validate", str(spec)],
                             cwd=ROOT, env={**os.environ, **stack_env}, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert "warning: no running worker serves queue legato.test.nobody (steps: a)" in \
        " ".join(checked.stderr.split())
    served = subprocess.run([sys.executable, "-m", "legato.cli", "validate", "support_triage"],
                            cwd=ROOT, env={**os.environ, **stack_env}, capture_output=True,
                            text=True, timeout=60)
    assert served.returncode == 0 and "warning" not in served.stderr, served.stderr
