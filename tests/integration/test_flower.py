"""Flower against the test stack: tasks appear under their public names with ids (not prompts)
in their arguments, basic auth is enforced, and its REST API can enqueue a Legato job."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from legato.local import processes
from legato.local.net import free_port

AUTH = ("ops", "s3cret")


@pytest.fixture(scope="module")
def flower(stack_env, workers, tmp_path_factory) -> Iterator[str]:
    port = free_port()
    service = processes.flower(port, env=stack_env, basic_auth=":".join(AUTH),
                               log_dir=tmp_path_factory.mktemp("flower"))
    with service:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthcheck", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url


def _tasks(url: str, run_id: str, want: int) -> list[dict]:
    deadline = time.monotonic() + 20
    found: list[dict] = []
    while time.monotonic() < deadline:
        tasks = httpx.get(f"{url}/api/tasks", auth=AUTH, timeout=5).json()
        found = [t for t in tasks.values() if run_id in (t.get("kwargs") or "")]
        if len(found) >= want:
            break
        time.sleep(0.3)
    return found


def test_flower_requires_auth_and_shows_tasks_by_public_name(flower, legato, fake):
    assert httpx.get(f"{flower}/api/tasks", timeout=5).status_code == 401
    run_id = legato.submit("summarize", {"text": "a secret prompt text that must not leak"})
    assert legato.wait(run_id, timeout=30).status == "succeeded"

    tasks = _tasks(flower, run_id, want=3)
    names = sorted(t["name"] for t in tasks)
    # headline ends the run: a segment that closes it, instead of a legato.finalize task
    assert names == ["legato.llm", "legato.segment", "legato.tool"]
    for t in tasks:
        assert "secret prompt" not in (t.get("args") or "") + (t.get("kwargs") or "")
    # a task's kwargs read as its run and step, not as a repr of its envelopes
    assert sorted(t["kwargs"] for t in tasks) == sorted(
        f"run={run_id} step={path}" for path in ("headline", "length", "summary"))


def test_flower_rest_api_enqueues_a_legato_job(flower, legato, fake):
    reply = httpx.post(
        f"{flower}/api/task/send-task/legato.submit", auth=AUTH, timeout=10,
        json={"kwargs": {"pipeline": "summarize", "input": {"text": "sent through Flower"}},
              "queue": "legato.control"},
    )
    assert reply.status_code == 200, reply.text
    task_id = reply.json()["task-id"]
    deadline = time.monotonic() + 20
    result = None
    while time.monotonic() < deadline:
        info = httpx.get(f"{flower}/api/task/result/{task_id}", auth=AUTH, timeout=5).json()
        if info.get("state") == "SUCCESS":
            result = info["result"]
            break
        time.sleep(0.3)
    assert result is not None
    assert legato.wait(result["run_id"], timeout=30).status == "succeeded"
