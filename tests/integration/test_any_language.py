"""Producers on Celery's defaults: a job sent without naming a queue (to Celery's `celery` queue)
is served by the control workers, from Python and from celery-node; `legato.submit` follows
another task in a chain (its result is the input); `legato.status` tells any client the outcome."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from celery import Celery, chain

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / ".venv" / "node" / "node_modules"
SCRIPT = Path(__file__).parent / "js" / "submit_and_wait.js"


@pytest.fixture
def bare_client(stack_env) -> Celery:
    """A Celery client on Celery's own defaults: it knows the broker and the task names only."""
    url = stack_env["LEGATO_REDIS_URL"]
    return Celery(broker=url, backend=url)


def test_a_job_sent_to_no_queue_in_particular_runs(legato, fake, bare_client):
    reply = bare_client.send_task("legato.submit", kwargs={
        "pipeline": "summarize", "input": {"text": "Nobody said which queue."}})
    assert reply.get(timeout=30)["run_id"]
    run = legato.wait(reply.result["run_id"], timeout=30)
    assert run.status == "succeeded", run.error
    status = bare_client.send_task("legato.status", kwargs={"run_id": run.id}).get(timeout=30)
    assert status["status"] == "succeeded" and status["output"] == run.output
    assert status["id"] == run.id and status["usage"]["calls"] == run.usage.calls


def test_submit_follows_another_task_in_a_chain_and_takes_its_result_as_input(
        legato, fake, bare_client):
    canvas = chain(bare_client.signature("tests.text_of", kwargs={"words": 7}),
                   bare_client.signature("legato.submit", kwargs={"pipeline": "summarize"}))
    run_id = canvas.apply_async().get(timeout=30)["run_id"]
    run = legato.wait(run_id, timeout=30)
    assert run.status == "succeeded", run.error
    assert run.input == {"text": " ".join(f"word{i}" for i in range(7))}


def test_submit_without_input_or_a_previous_result_is_refused(bare_client):
    reply = bare_client.send_task("legato.submit", kwargs={"pipeline": "summarize"})
    with pytest.raises(Exception, match="no input"):
        reply.get(timeout=30)


def test_a_celery_node_producer_submits_and_reads_the_outcome(legato, fake, stack_env):
    node = shutil.which("node")
    assert node, "node is not installed (the machine's Node.js runs celery-node)"
    assert (NODE_MODULES / "celery-node").is_dir(), \
        f"celery-node is not in {NODE_MODULES}: `make install` installs it"
    done = subprocess.run(
        [node, str(SCRIPT), stack_env["LEGATO_REDIS_URL"], "summarize",
         json.dumps({"text": "A job from Node.js, on celery-node's defaults."})],
        env={"NODE_PATH": str(NODE_MODULES), "PATH": "/usr/bin:/bin"}, capture_output=True,
        text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["status"] == "succeeded", run
    assert legato.status(run["id"]).output == run["output"]


def test_status_of_an_unknown_run_is_a_clear_error_with_no_traceback(bare_client, legato):
    reply = bare_client.send_task("legato.status", kwargs={"run_id": "no-such-run"})
    with pytest.raises(Exception, match="no run 'no-such-run'"):
        reply.get(timeout=30)
    assert not reply.traceback  # nothing of the server's code or paths travels back
