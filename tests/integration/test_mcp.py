"""MCP tools under Legato's tool rules, with the shipped notes server (tests/examples/) started
by workers of this module from an mcp.yaml: the example agent files a note through it; a `tool`
step calls one MCP tool with its idempotency key in `_meta`; a streamable-HTTP server gets its
header; a run's tool list is pinned when it is first resolved; a call that needs approval waits
for it; a completed call is never sent again when its turn runs again on another worker; the
server's credential reaches it and never Redis."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from legato import Legato, Pipeline, Tool
from legato.errors import SpecError
from legato.local import net, processes
from legato.spec import Agent
from legato.tools.mcp import McpHub, McpServer, pinned
from legato.tools.runner import idempotency_key
from tests.conftest import FAST_RECOVERY

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "tests" / "examples"
SERVER = EXAMPLES / "notes_server.py"
QUEUE = "legato.test.mcp"
SECRET = "notes-" + uuid.uuid4().hex  # the server's credential: only in the workers' env


@pytest.fixture(scope="module")
def notes_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notes") / "notes.jsonl"


@pytest.fixture(scope="module")
def mcp_env(stack_env, notes_log, tmp_path_factory) -> dict[str, str]:
    # The shipped mcp.yaml, run with this interpreter and the server by its absolute path.
    config = tmp_path_factory.mktemp("mcp") / "mcp.yaml"
    config.write_text((EXAMPLES / "mcp.yaml").read_text().replace(
        "command: [python, tests/examples/notes_server.py]",
        f"command: [{json.dumps(sys.executable)}, {json.dumps(str(SERVER))}]"))
    return {**stack_env, **FAST_RECOVERY, "LEGATO_MCP_FILE": str(config),
            "NOTES_TOKEN": SECRET, "NOTES_LOG": str(notes_log)}


@pytest.fixture(scope="module")
def mcp_worker(mcp_env, tmp_path_factory):
    """Start a worker of QUEUE with the MCP config; the first one started stays up for the
    module's tests (the last test kills it)."""
    started: list[processes.Service] = []
    logs = tmp_path_factory.mktemp("mcp-workers")

    def start(name: str) -> processes.Service:
        service = processes.worker(f"{name}-{uuid.uuid4().hex[:6]}", [QUEUE], env=mcp_env,
                                   concurrency=8, log_dir=logs)
        started.append(service.start(timeout=120))  # a loaded machine starts slowly
        return service

    start("notes")
    yield start, started
    for service in started:
        service.stop()


def calls(log: Path, **match) -> list[dict]:
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [r for r in rows if all(r.get(k) == v or r["args"].get(k) == v
                                   for k, v in match.items())]


def script_agent(fake, note: str, *, extra: list | None = None) -> None:
    first = [{"name": "notes__add_note", "arguments": {"text": note}}, *(extra or [])]
    fake.script({"rules": [
        {"match": {"any_contains": '"tool": "notes__list_notes"'}, "reply": "Notes filed."},
        {"match": {"any_contains": '"tool": "notes__add_note"'},
         "tool_calls": [{"name": "notes__list_notes", "arguments": {}}]},
        {"match": {"contains": note}, "tool_calls": first},
    ]})


def values_in_redis(legato: Legato) -> str:
    r = legato.store.redis
    dump = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        value = {"string": r.get, "hash": r.hgetall, "list": lambda k: r.lrange(k, 0, -1),
                 "set": r.smembers, "zset": lambda k: r.zrange(k, 0, -1)}.get(kind)
        dump.append(f"{key}={value(key) if value else ''}")
    return "\n".join(dump)


def test_the_example_agent_files_a_note_through_the_mcp_server(legato, fake, mcp_worker,
                                                               notes_log):
    note = f"buy milk {uuid.uuid4().hex[:6]}"
    script_agent(fake, note)
    spec = legato.load(str(EXAMPLES / "notes_keeper.yaml"))
    spec = spec.model_copy(update={"steps": [spec.steps[0].model_copy(update={"queue": QUEUE})]})
    run = legato.wait(legato.submit(spec, {"note": note}), timeout=60)

    assert run.status == "succeeded", run.error
    assert run.output == "Notes filed."
    transcript = legato.store.get_step(run.id, "keeper/turn[2]").output["messages"]
    assert '"tool": "notes__add_note"' in transcript[3]["content"]
    assert note in transcript[5]["content"]  # list_notes returned the note just filed
    filed = calls(notes_log, tool="add_note", text=note)
    assert len(filed) == 1 and len(filed[0]["key"]) == 32  # the idempotency key, in _meta
    assert filed[0]["token"] == hashlib.sha256(SECRET.encode()).hexdigest()[:16]
    listing = json.loads(legato.store.pinned_tools(run.id, "notes"))
    assert [t["name"] for t in listing] == ["add_note", "list_notes", "nap"]
    assert SECRET not in values_in_redis(legato)  # the credential stayed in the worker


def test_a_tool_step_calls_one_mcp_tool_and_bad_names_are_refused(legato, mcp_worker,
                                                                   notes_log):
    note = f"tool step {uuid.uuid4().hex[:6]}"
    step = Tool(id="file", tool="mcp:notes/add_note", args={"text": "{{ input.note }}"},
                queue=QUEUE)
    run = legato.wait(legato.submit(Pipeline(name="mcp_tool", steps=[step]), {"note": note}),
                      timeout=60)
    assert run.status == "succeeded", run.error
    assert run.output.endswith(" notes")
    [filed] = calls(notes_log, tool="add_note", text=note)
    assert filed["key"] == idempotency_key(run.id, "file", "0")

    with pytest.raises(SpecError, match="is not mcp:<server>"):
        legato.submit(Pipeline(name="bad", steps=[Tool(id="t", tool="mcp:no such")]), {})
    for name, message in [("mcp:ghost/x", "no MCP server 'ghost'"),
                          ("mcp:notes/erase", "has no tool 'erase'"),
                          ("mcp:notes", "a tool step names one tool")]:
        step = Tool(id="t", tool=name, queue=QUEUE)
        failed = legato.wait(legato.submit(Pipeline(name="bad", steps=[step]), {}), timeout=60)
        assert failed.status == "failed" and message in failed.error, failed.error


def test_a_runs_tool_list_is_pinned_when_first_resolved(legato, tmp_path):
    env = {"NOTES_TOKEN": "t", "NOTES_LOG": str(tmp_path / "log.jsonl")}
    before = McpHub({"notes": McpServer(command=[sys.executable, str(SERVER)], env=env)})
    after = McpHub({"notes": McpServer(command=[sys.executable, str(SERVER)],
                                       env={**env, "NOTES_EXTRA": "1"})})
    try:
        in_flight, later = uuid.uuid4().hex, uuid.uuid4().hex
        first = pinned(legato.store, in_flight, "notes", before)
        assert [t["name"] for t in first] == ["add_note", "list_notes", "nap"]
        assert "shout" in [t["name"] for t in after.list_tools("notes")]  # the server changed
        assert pinned(legato.store, in_flight, "notes", after) == first  # the run did not
        assert "shout" in [t["name"] for t in pinned(legato.store, later, "notes", after)]
    finally:
        before.close()
        after.close()


def test_a_streamable_http_server_gets_its_header_and_the_key(tmp_path, monkeypatch):
    log = tmp_path / "http.jsonl"
    port = net.free_port()
    server = subprocess.Popen([sys.executable, str(SERVER), "http", str(port)],
                              env={**os.environ, "NOTES_TOKEN": "t", "NOTES_LOG": str(log)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    monkeypatch.setenv("NOTES_HEADER_SECRET", SECRET)  # the calling process's environment
    hub = McpHub({"notes": McpServer(url=f"http://127.0.0.1:{port}/mcp",
                                     headers={"X-Notes-Token": "${NOTES_HEADER_SECRET}"})})
    try:
        net.wait_for_port("127.0.0.1", port, 60)
        assert [t["name"] for t in hub.list_tools("notes")] == ["add_note", "list_notes", "nap"]
        assert hub.call("notes", "add_note", {"text": "over http"}, "key-1") == "1 notes"
        [entry] = calls(log, tool="add_note")
        assert entry["key"] == "key-1"
        assert entry["header"] == hashlib.sha256(SECRET.encode()).hexdigest()[:16]
    finally:
        hub.close()
        server.terminate()
        server.wait(10)


def test_an_mcp_tool_that_needs_approval_waits_then_runs_once(legato, fake, mcp_worker,
                                                              notes_log):
    note = f"approved {uuid.uuid4().hex[:6]}"
    script_agent(fake, note)
    agent = Agent(id="keeper", model="small", queue=QUEUE, max_turns=4,
                  tools=[{"name": "mcp:notes/add_note", "approval": "required"},
                         "mcp:notes/list_notes"],
                  prompt="File this note, then list the notes: {{ input.note }}")
    run_id = legato.submit(Pipeline(name="mcp_approval", steps=[agent]), {"note": note})
    deadline = time.monotonic() + 60
    while legato.status(run_id).status != "waiting":
        assert time.monotonic() < deadline, legato.status(run_id)
        time.sleep(0.1)
    assert legato.status(run_id).awaiting == f'approval of notes__add_note({{"text": "{note}"}})'
    assert calls(notes_log, tool="add_note", text=note) == []  # not called before approval
    legato.signal(run_id, "keeper", {"decision": "approve"}, by="ana")

    run = legato.wait(run_id, timeout=60)
    assert run.status == "succeeded", run.error
    assert len(calls(notes_log, tool="add_note", text=note)) == 1
    assert legato.store.get_step(run_id, "keeper/approval[0]").detail["approval"]["by"] == "ana"


def test_a_completed_mcp_call_is_not_sent_again_when_its_turn_runs_again(
        legato, fake, mcp_worker, notes_log):
    start, started = mcp_worker
    victim = started[0]  # the only worker of QUEUE (`notes-...`): it takes the turn
    note = f"once {uuid.uuid4().hex[:6]}"
    seconds = 20.0 + (uuid.uuid4().int % 1000) / 1000  # a nap no other test took
    script_agent(fake, note, extra=[{"name": "notes__nap", "arguments": {"seconds": seconds}}])
    agent = Agent(id="keeper", model="small", tools=["mcp:notes"], queue=QUEUE, max_turns=4,
                  prompt="File this note, then list the notes: {{ input.note }}")
    run_id = legato.submit(Pipeline(name="mcp_once", steps=[agent]), {"note": note})
    deadline = time.monotonic() + 120  # a bound, not a measure: this machine may be loaded
    while not (calls(notes_log, tool="add_note", text=note)
               and calls(notes_log, tool="nap", seconds=seconds)):
        assert time.monotonic() < deadline, "the turn's calls never reached the server"
        time.sleep(0.1)
    time.sleep(0.5)  # add_note's answer is journaled; nap still sleeps
    victim.signal(signal.SIGKILL)
    start("rescuer")

    run = legato.wait(run_id, timeout=60)
    assert run.status == "succeeded", run.error
    turn = legato.store.get_step(run_id, "keeper/turn[0]")
    assert turn.attempt >= 2 and turn.worker.startswith("rescuer"), turn  # ran again
    assert len(calls(notes_log, tool="add_note", text=note)) == 1  # never re-sent
    transcript = legato.store.get_step(run_id, "keeper/turn[0]").output["messages"]
    assert len(calls(notes_log, tool="nap", seconds=seconds)) == 2, transcript  # sent again
