"""The process runtime (workers/runtime.py), the one Settings object, and who may read what.

- a forked child gets a fresh runtime — its own store, pools, tool threads and HTTP tools' client
  — and its tool calls work (the parent's threads did not come along);
- every `LEGATO_*` name the docs mention is a Settings field (or named in `settings.ELSEWHERE`);
- no module of the package reads the environment but settings.py (and the few allowed below);
- the engine (pipeline/) does not import the worker wiring, and keys are built in keys.py only.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from legato.keys import Keys
from legato.settings import ELSEWHERE, Settings, get_settings, replace
from legato.tools import tool, toolbox
from legato.tools.runner import call_tool
from legato.workers import lifeline, resources, runtime

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = [ROOT / "pipeline", ROOT / "tasks", ROOT / "workers"]


@tool(name="unit_whoami")
def _whoami() -> int:
    return os.getpid()


@pytest.fixture
def fresh_runtime():
    runtime.start(Settings(model_transport="httpx", redis_url="redis://127.0.0.1:1/0"))
    yield runtime.current()
    runtime.reset()


def test_the_runtime_is_one_per_process_and_made_again_after_reset(fresh_runtime):
    rt = fresh_runtime
    assert runtime.current() is rt and resources.store() is rt.store()
    assert resources.transport() is rt.transport() and resources.gateway() is rt.gateway()
    assert resources.batch_pool() is rt.batch_pool() and resources.ballot() is rt.store().ballot
    assert resources.tools() is rt.tools is toolbox.installed()
    assert rt.gateway().default_cache == rt.settings.cache
    assert resources.keeper() is rt.keeper() is lifeline.keeper(rt.store(), rt.settings)
    http = rt.http()
    resources.reset()
    assert http.is_closed and toolbox.installed() is None
    again = runtime.current()
    assert again is not rt and again.http() is not http
    assert again.settings == get_settings()  # reset forgets start()'s settings too


def test_a_forked_child_gets_a_fresh_runtime(fresh_runtime):
    rt = fresh_runtime
    parent = {"store": rt.store(), "http": rt.http(), "transport": rt.transport(),
              "batch": rt.batch_pool(), "tools": rt.tools, "tool_http": rt.tools.http}
    assert call_tool(_tool(), {}, key="k") == os.getpid()  # the parent's tool threads started
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's teardown
        try:
            child = runtime.current()
            found = {
                "fresh": child is not rt and child.pid == os.getpid(),
                "settings": child.settings == rt.settings,
                "store": child.store() is not parent["store"],
                "http": child.http() is not parent["http"],
                "transport": child.transport() is not parent["transport"],
                "batch": child.batch_pool() is not parent["batch"],
                "tools": child.tools is not parent["tools"] and toolbox.installed() is child.tools,
                "tool_http": child.tools.http is not parent["tool_http"],
                "tool_call": call_tool(_tool(), {}, key="k") == os.getpid(),
            }
            os.write(write, json.dumps(found).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        found = json.loads(pipe.read() or "{}")
    assert found and all(found.values()), found  # "settings": the child's are start()'s
    assert runtime.current() is rt and not parent["http"].is_closed  # the parent's untouched


def _tool():
    from legato.tools import get_tool

    return get_tool("unit_whoami")


def test_settings_read_the_environment_only_in_from_env(monkeypatch):
    monkeypatch.setenv("LEGATO_HTTP_TOOL_HOSTS", "API.example.com, *.corp")
    monkeypatch.setenv("LEGATO_TOOL_MODULES", "a.tools,b.tools")
    monkeypatch.setenv("LEGATO_CACHE", "read-write")
    monkeypatch.setenv("LEGATO_OTEL", "yes")
    monkeypatch.setenv("LEGATO_LOG_FORMAT", "JSON")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "svc")
    s = Settings.from_env()
    assert s.http_tool_hosts == ("api.example.com", "*.corp")
    assert s.tool_modules == ("a.tools", "b.tools")
    assert (s.cache, s.otel, s.log_format, s.otel_service_name) == ("read-write", True, "json",
                                                                     "svc")
    assert Settings() == Settings.model_construct()  # no environment in a plain Settings()
    assert Settings().http_tool_hosts == () and not Settings().otel
    assert replace(s, redis_url="redis://x/1").redis_url == "redis://x/1"
    monkeypatch.setenv("LEGATO_CACHE", "sometimes")  # as before: an unknown mode is off
    assert Settings.from_env().cache == "off"
    monkeypatch.setenv("LEGATO_MAX_RECOVERIES", "many")
    with pytest.raises(ValueError, match="max_recoveries"):
        Settings.from_env()


@pytest.mark.parametrize(("value", "mode"), [
    ("1", "always"), ("true", "always"), ("always", "always"), ("0", "off"), ("no", "off"),
    ("OFF", "off"), ("watched", "watched"), (None, "watched")])
def test_the_stream_setting_reads_its_modes_and_the_old_on_off_values(monkeypatch, value, mode):
    if value is None:
        monkeypatch.delenv("LEGATO_STREAM", raising=False)
    else:
        monkeypatch.setenv("LEGATO_STREAM", value)
    assert Settings.from_env().stream == mode
    monkeypatch.setenv("LEGATO_STREAM", "sometimes")
    with pytest.raises(ValueError, match="stream"):
        Settings.from_env()


def _legato_names(text: str) -> set[str]:
    return set(re.findall(r"\bLEGATO_[A-Z][A-Z_]*[A-Z]\b", text))


def test_every_legato_variable_the_docs_name_is_a_setting():
    fields = {f"LEGATO_{name.upper()}" for name in Settings.model_fields}
    docs = [ROOT / "docs" / "operations.md", *sorted((ROOT / "docs").glob("*.md")),
            ROOT / "README.md", ROOT / "docker-compose.yml"]
    named = set().union(*(_legato_names(p.read_text()) for p in docs))
    assert "LEGATO_HTTP_TOOL_HOSTS" in named  # the scan finds them
    missing = sorted(named - fields - set(ELSEWHERE))
    assert not missing, f"not Settings fields: {missing}"


def test_every_legato_variable_the_package_names_is_a_setting():
    fields = {f"LEGATO_{name.upper()}" for name in Settings.model_fields}
    named: set[str] = set()
    for folder in PACKAGE:
        for path in folder.rglob("*.py"):
            named |= _legato_names(path.read_text())
    assert not sorted(named - fields - set(ELSEWHERE))


# Modules that may touch os.environ, and why. Everything else gets settings passed in.
ENVIRON_ALLOWED = {
    "pipeline/settings.py": "the one reader (through pydantic-settings)",
    "pipeline/loader.py": "models.yaml's ${VAR} expansion (being reworked separately)",
    "pipeline/models/openai_compat.py": "a model's api_key_env (being reworked separately)",
    "pipeline/models/anthropic.py": "a model's api_key_env (being reworked separately)",
    "pipeline/models/credentials.py": "the worker's own api_key_env and ${VAR} in its headers",
    "pipeline/local/processes.py": "a child process's environment: this one's plus its own",
    "pipeline/cli/__init__.py": "LEGATO_DEBUG, read even when the settings fail to load",
    "pipeline/cli/stack.py": "Flower's environment: FLOWER_BASIC_AUTH goes there, not on argv",
    "pipeline/local/model_server.py": "the llama.cpp server's environment (minus CONFIG_FILE)",
    "pipeline/local/rabbitmq.py": "the RabbitMQ node's environment",
    "pipeline/local/demo.py": "writes: the demo's stack, for models.yaml in this process",
}


def _environ_uses(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        attribute = isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv",
                                                                     "environb")
        imported = isinstance(node, ast.ImportFrom) and node.module == "os" and any(
            a.name in ("environ", "getenv") for a in node.names)
        if attribute or imported:
            lines.append(node.lineno)
    return lines


def test_no_module_reads_the_environment_but_settings():
    offenders, used = {}, set()
    for folder in PACKAGE:
        for path in folder.rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            lines = _environ_uses(path)
            if lines and rel in ENVIRON_ALLOWED:
                used.add(rel)
            elif lines:
                offenders[rel] = lines
    assert not offenders, f"read os.environ (take Settings instead): {offenders}"
    assert used == set(ENVIRON_ALLOWED) - {"pipeline/settings.py"}, "a stale allowance"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_the_engine_does_not_import_the_worker_wiring():
    for path in (ROOT / "pipeline").rglob("*.py"):
        wiring = {m for m in _imports(path) if m.startswith(("legato.workers", "legato.tasks"))}
        assert not wiring, f"{path.relative_to(ROOT)} imports {wiring}"
    code = ("import sys, legato, legato.client, legato.cli.runs, legato.cli.stack; "
            "print(sorted(m for m in sys.modules if m.startswith(('legato.workers', "
            "'legato.tasks'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={k: v for k, v in os.environ.items()
                                                    if not k.startswith("LEGATO_")})
    assert out.stdout.strip() == "[]"


def test_redis_keys_are_built_in_keys_py_only():
    pattern = re.compile(r"""f["'][^"']*\{self\.(prefix|keys\.prefix)\}:""")
    for folder in PACKAGE:
        for path in folder.rglob("*.py"):
            if path.name != "keys.py":
                assert not pattern.search(path.read_text()), path
    # Nobody reaches into the store's client or key layout from outside it.
    reach = re.compile(r"\bstore(\(\))?\.(redis|keys)\b")
    for folder in PACKAGE:
        for path in folder.rglob("*.py"):
            assert not reach.search(path.read_text()), path


def test_the_key_strings_are_unchanged():
    k = Keys("p")
    assert [k.spec("h"), k.run("r"), k.steps("r"), k.outputs("r"), k.attempts("r")] == [
        "p:spec:h", "p:run:{r}", "p:run:{r}:steps", "p:run:{r}:outputs", "p:run:{r}:attempts"]
    assert [k.votes("r", "v/j"), k.vote_reached("r", "v/j")] == [
        "p:run:{r}:vote:v/j:votes", "p:run:{r}:vote:v/j:reached"]
    assert [k.idem("x"), k.done("r"), k.runs, k.active, k.leases, k.lease_owner,
            k.lease_sig] == ["p:idem:x", "p:done:r", "p:runs", "p:active", "p:leases",
                             "p:lease:owner", "p:lease:sig"]
    assert [k.breaker("b"), k.breaker_probe("b"), k.budget("r"), k.cache("d")] == [
        "p:breaker:b", "p:breaker:b:probe", "p:budget:r", "p:cache:d"]
    assert k.ratelimit("m") == ["p:ratelimit:m:requests", "p:ratelimit:m:tokens"]
