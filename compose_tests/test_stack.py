"""docker-compose.yml on a real Docker engine: build, `up -d`, every service healthy, every example
pipeline run through the stack, every queue the pipelines name served, a worker service scaled,
Redis restarted and SIGKILLed mid-run with the runs surviving on its AOF, Flower's basic auth,
`down -v`.

Not part of `make test` (it needs a Docker engine and takes minutes): `make compose-test` runs it.
Jobs are submitted and watched from inside the stack (`docker-compose exec -T worker-control
python - ... < in_stack.py`), since only Flower publishes a port. Set COMPOSE to the compose
command (default: `docker-compose`, else `docker compose`).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery import Celery

from legato.compile import Compiler
from legato.loader import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).with_name("in_stack.py")
COMPOSE_FILE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = sorted(COMPOSE_FILE["services"])
EXAMPLES = sorted(p.stem for p in (ROOT / "pipelines").glob("*.yaml") if p.stem != "models")
DEFAULT_QUEUES = {"legato.control", "legato.llm", "legato.tools"}
RUN_TIMEOUT = 600.0
# The answer each example with a wait step gets (else it waits for a person forever).
ANSWERS = {"approval_flow": ("approve", {"approved": True, "reviewer": "compose",
                                         "reply": "It ships today."})}

pytestmark = pytest.mark.timeout(1800)


def pipeline_queues() -> set[str]:
    """Every queue a run of an example pipeline may send to, a route's every branch
    included: the engine's own answer (`Compiler.queues`), not a second reading of the YAML."""
    compiler = Compiler(Celery("queues"), "-", "-")
    found: set[str] = set()
    for name in EXAMPLES:
        spec = load_pipeline(name, pipelines_dir=ROOT / "pipelines",
                             models_file=ROOT / "pipelines" / "models.yaml")
        found |= set(compiler.queues(spec))
    return found


def compose_command() -> list[str]:
    if os.environ.get("COMPOSE"):
        return shlex.split(os.environ["COMPOSE"])
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    def __init__(self) -> None:
        self.project = f"legatoct{os.getpid()}"
        self.flower_port = free_port()
        self.flower_auth = f"ops:{secrets.token_hex(8)}"
        self.console_port = free_port()
        self.console_token = secrets.token_hex(16)
        self.env = {**os.environ, "COMPOSE_PROJECT_NAME": self.project,
                    "REDIS_PASSWORD": secrets.token_hex(16),
                    "FLOWER_BASIC_AUTH": self.flower_auth,
                    "FLOWER_PORT": str(self.flower_port),
                    "LEGATO_CONSOLE_TOKEN": self.console_token,
                    "LEGATO_CONSOLE_PORT": str(self.console_port)}
        self.example_runs: dict[str, str] = {}  # pipeline -> run id, from the first round

    def compose(self, *args: str, timeout: float = 600, check: bool = True,
                stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [*compose_command(), "-f", str(ROOT / "docker-compose.yml"), *args]
        result = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True,
                                timeout=timeout, input=stdin)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def helper(self, *args: str, timeout: float = RUN_TIMEOUT + 60) -> Any:
        """in_stack.py's answer, run by Python inside a worker-control container."""
        result = self.compose("exec", "-T", "worker-control", "python", "-", *args,
                              stdin=HELPER.read_text(), timeout=timeout)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def submit(self, jobs: list[list[Any]]) -> list[str]:
        ids: list[str] = self.helper("submit", json.dumps(jobs))
        return ids

    def wait(self, ids: list[str], seconds: float = RUN_TIMEOUT) -> dict[str, Any]:
        runs: dict[str, Any] = self.helper("wait", json.dumps(ids), str(seconds))
        return runs

    def containers(self, service: str) -> list[str]:
        out = self.compose("ps", "-q", service).stdout.split()
        return sorted(out)

    def state(self, container: str) -> dict[str, Any]:
        out = subprocess.run(["docker", "inspect", "-f", "{{json .}}", container],
                             capture_output=True, text=True, check=True).stdout
        info: dict[str, Any] = json.loads(out)
        return info

    def nodes(self, service: str) -> set[str]:
        """The Celery node names of a service's containers (celery@<container hostname>)."""
        return {f"celery@{self.state(c)['Config']['Hostname']}" for c in self.containers(service)}

    def wait_healthy(self, services: list[str], timeout: float = 600,
                     replicas: dict[str, int] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pending = []
            for service in services:
                ids = self.containers(service)
                want = (replicas or {}).get(service, 1)
                if len(ids) < want:
                    pending.append(f"{service}: {len(ids)}/{want} containers")
                for cid in ids:
                    state = self.state(cid)["State"]
                    if state["Status"] in ("restarting", "exited", "dead"):
                        logs = self.compose("logs", "--tail", "40", service, check=False).stdout
                        raise AssertionError(f"{service} is {state['Status']}:\n{logs}")
                    health = state.get("Health", {}).get("Status", "no healthcheck")
                    if health != "healthy":
                        pending.append(f"{service}: {health}")
            if not pending:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not healthy after {timeout:.0f}s: {pending}")
            time.sleep(3)

    def flower(self, path: str, auth: str | None) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{self.flower_port}{path}")
        if auth:
            token = base64.b64encode(auth.encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)


    def console(self, path: str, token: str | None) -> tuple[int, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.console_port}{path}")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status), json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), None


def assert_succeeded(runs: dict[str, Any], ids: list[str]) -> None:
    assert set(runs) == set(ids), f"missing runs: {set(ids) - set(runs)}"
    bad = {run_id: (r["record"] or {}).get("status", r.get("error"))
           for run_id, r in runs.items()
           if not r["record"] or r["record"]["status"] != "succeeded"}
    assert not bad, {k: (v, (runs[k]["record"] or {}).get("error")) for k, v in bad.items()}
    for r in runs.values():
        assert r["record"]["output"] not in (None, ""), r["record"]
        assert r["record"]["usage"]["calls"] >= 1, r["record"]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    engine = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                            capture_output=True, text=True)
    if engine.returncode != 0:  # a failure, never a skip: this file exists to use an engine
        pytest.fail("no Docker engine answers `docker info` (no registry? see docs/operations.md,"
                    f" Testing the stack):\n{engine.stderr[-1000:]}")
    s = Stack()
    try:
        s.compose("build", timeout=1800)
        s.compose("up", "-d", timeout=600)
        yield s
    finally:
        if os.environ.get("LEGATO_COMPOSE_KEEP") != "1":
            s.compose("down", "-v", "--remove-orphans", check=False, timeout=300)


def test_the_stack_comes_up_and_every_service_is_healthy(stack):
    stack.wait_healthy(SERVICES)
    for service in SERVICES:
        (container,) = stack.containers(service)
        state = stack.state(container)
        assert state["State"]["Health"]["Status"] == "healthy", service
        assert state["RestartCount"] == 0, f"{service} restarted (crash loop?)"
    # The model serves completions (not just /v1/models): one call from inside the stack.
    reply = stack.compose(
        "exec", "-T", "worker-llm", "python", "-c",
        "import json, urllib.request; r = urllib.request.urlopen(urllib.request.Request("
        "'http://model:8080/v1/chat/completions', data=json.dumps({'model': 'smollm2', "
        "'max_tokens': 8, 'messages': [{'role': 'user', 'content': 'Say hello'}]}).encode(), "
        "headers={'Content-Type': 'application/json'}), timeout=120); "
        "print(json.load(r)['choices'][0]['message']['content'])").stdout
    assert reply.strip()


def test_every_queue_the_pipelines_name_has_a_worker(stack):
    wanted = DEFAULT_QUEUES | pipeline_queues()
    assert {"legato.branch.billing", "legato.branch.technical"} <= wanted
    served: dict[str, list[str]] = stack.helper("queues")
    consumed = {q for qs in served.values() for q in qs}
    assert wanted <= consumed, f"unserved: {wanted - consumed}"


def _submit_examples(stack) -> list[str]:
    """One run of every example, and the answers of those that wait for a person."""
    ids = stack.submit([[name, json.loads((ROOT / "pipelines" / f"{name}.input.json")
                                          .read_text())] for name in EXAMPLES])
    for name, run_id in zip(EXAMPLES, ids, strict=True):
        if name in ANSWERS:  # sent early, a signal is kept until the run reaches the step
            step, data = ANSWERS[name]
            stack.compose("exec", "-T", "worker-control", "legato", "signal", run_id, step,
                          "--data", json.dumps(data), "--by", "compose-test")
    return ids


def test_every_example_pipeline_succeeds_through_the_stack(stack):
    ids = _submit_examples(stack)
    runs = stack.wait(ids)
    assert_succeeded(runs, ids)
    stack.example_runs = dict(zip(EXAMPLES, ids, strict=True))
    # Steps ran where the compose file says: model calls on worker-llm, tools on worker-tools.
    llm_nodes, tool_nodes = stack.nodes("worker-llm"), stack.nodes("worker-tools")
    steps = [s for r in runs.values() for s in r["steps"]]
    assert {s["worker"] for s in steps if s["queue"] == "legato.llm"} <= llm_nodes
    assert {s["worker"] for s in steps if s["queue"] == "legato.tools"} == tool_nodes


def test_the_documented_cli_submit_waits_for_a_run(stack):
    result = stack.compose("exec", "-T", "worker-control", "legato", "submit", "summarize",
                           "--input", "@/app/pipelines/summarize.input.json", "--wait",
                           "--json", timeout=RUN_TIMEOUT)
    assert json.loads(result.stdout)["status"] == "succeeded"


@pytest.mark.parametrize("queue,service", [("legato.branch.billing", "worker-billing"),
                                           ("legato.branch.technical", "worker-technical")])
def test_a_branch_queue_runs_on_its_own_service(stack, queue, service):
    inline = {"name": f"on-{service}", "steps": [
        {"kind": "llm", "id": "reply", "model": "small", "queue": queue,
         "prompt": "Say hello in three words."}]}
    (run_id,) = stack.submit([[inline, {}]])
    runs = stack.wait([run_id])
    assert_succeeded(runs, [run_id])
    (step,) = runs[run_id]["steps"]
    assert step["queue"] == queue and step["worker"] in stack.nodes(service)


def test_a_worker_service_scales(stack):
    stack.compose("up", "-d", "--no-recreate", "--scale", "worker-llm=2", "worker-llm")
    stack.wait_healthy(["worker-llm"], replicas={"worker-llm": 2}, timeout=300)
    nodes = stack.nodes("worker-llm")
    assert len(nodes) == 2
    served: dict[str, list[str]] = stack.helper("queues")
    assert {n for n, qs in served.items() if "legato.llm" in qs} == nodes
    # Both replicas take model calls from the one queue.
    ids = stack.submit([["summarize", {"text": f"Report {i}: the queue grew, so we scaled the "
                                               "workers that read it and the backlog drained."}]
                        for i in range(8)])
    runs = stack.wait(ids)
    assert_succeeded(runs, ids)
    used = {s["worker"] for r in runs.values() for s in r["steps"] if s["queue"] == "legato.llm"}
    assert used == nodes, f"model calls ran on {used}, replicas are {nodes}"
    stack.compose("up", "-d", "--no-recreate", "--scale", "worker-llm=1", "worker-llm")
    assert len(stack.containers("worker-llm")) == 1


def test_runs_survive_a_redis_restart(stack):
    assert stack.example_runs, "needs the example runs"
    stack.compose("restart", "redis")
    stack.wait_healthy(["redis"], timeout=120)
    before = list(stack.example_runs.values())
    assert_succeeded(stack.wait(before, seconds=60), before)  # still there
    # ... and the workers reconnected: a new run goes through.
    ids = stack.submit([["summarize", json.loads(
        (ROOT / "pipelines" / "summarize.input.json").read_text())]])
    assert_succeeded(stack.wait(ids), ids)


def test_runs_survive_sigkill_of_redis_mid_run(stack):
    ids = _submit_examples(stack)
    # Mid-run: some run has started and some has not finished.
    deadline = time.monotonic() + 120
    statuses: list[str | None] = []
    while time.monotonic() < deadline:
        snapshot = stack.wait(ids, seconds=0)
        statuses = [(r["record"] or {}).get("status") for r in snapshot.values()]
        if "running" in statuses:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no run started: {statuses}")
    (redis,) = stack.containers("redis")
    started = stack.state(redis)["State"]["StartedAt"]
    time.sleep(1.5)  # appendfsync everysec: what was written a second ago is on disk
    unfinished = [run_id for run_id, r in stack.wait(ids, seconds=0).items()
                  if (r["record"] or {}).get("status") in ("queued", "running")]
    subprocess.run(["docker", "kill", "-s", "KILL", redis], check=True, capture_output=True)
    time.sleep(3)  # the workers notice it gone
    if stack.state(redis)["State"]["Status"] != "running":  # restart policies differ here
        stack.compose("start", "redis")
    stack.wait_healthy(["redis"], timeout=120)
    assert stack.state(redis)["State"]["StartedAt"] != started  # a new redis-server process
    assert unfinished, "every run had finished before the kill: not mid-run"
    runs = stack.wait(ids)
    assert_succeeded(runs, ids)
    before = list(stack.example_runs.values())
    assert_succeeded(stack.wait(before, seconds=60), before)


def test_flower_requires_basic_auth(stack):
    user, password = stack.flower_auth.split(":", 1)
    assert stack.flower("/", None) == 401
    assert stack.flower("/", f"{user}:wrong-{password}") == 401
    assert stack.flower("/", stack.flower_auth) == 200
    assert stack.flower("/api/workers", None) == 401
    assert stack.flower("/api/workers", stack.flower_auth) == 200


def test_the_console_requires_its_token_and_lists_the_runs(stack):
    assert stack.console("/api/runs", None)[0] == 401
    assert stack.console("/api/runs", f"wrong-{stack.console_token}")[0] == 401
    status, page = stack.console("/api/runs?limit=100", stack.console_token)
    assert status == 200
    listed = {r["id"] for r in page["runs"]}
    assert set(stack.example_runs.values()) <= listed


def test_down_removes_the_stack(stack):
    stack.compose("down", "-v", "--remove-orphans", timeout=300)
    label = f"label=com.docker.compose.project={stack.project}"
    left = subprocess.run(["docker", "ps", "-aq", "--filter", label],
                          capture_output=True, text=True, check=True).stdout.split()
    volumes = subprocess.run(["docker", "volume", "ls", "-q", "--filter", label],
                             capture_output=True, text=True, check=True).stdout.split()
    assert left == [] and volumes == []
