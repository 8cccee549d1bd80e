"""Tools from MCP servers, under Legato's tool rules (the official `mcp` SDK).

Servers are declared in the tool workers' `mcp.yaml` (LEGATO_MCP_FILE; default: beside
models.yaml), a stdio command or a streamable-HTTP URL each:

    servers:
      notes:
        command: [python, -m, notes_server]
        env: {NOTES_TOKEN: "${NOTES_TOKEN}"}      # expanded by the worker, when it connects
        timeout: 20                               # seconds a call may take (default 30)
        connect_timeout: 30                       # to start or reach it (default 60)
        retries: 1                                # transient failures retried (default 0)
        approval: required                        # an agent waits for a person (default none)
      search:
        url: https://mcp.example.com/mcp
        headers: {Authorization: "Bearer ${SEARCH_TOKEN}"}

A pipeline names them as `mcp:<server>` (all its tools) or `mcp:<server>/<tool>`, in an
agent's `tools` or a `tool` step's `tool`; models see each tool as `<server>__<tool>`. The
producer never talks to a server and holds no credential: only the name is checked when a
pipeline loads.

- **Pinned.** The first step of a run that resolves a server lists its tools and pins the list
  in the run (`<p>:run:{id}:mcp`, HSETNX: whichever worker is first, every later turn and step
  of the run reads that list), so a server changing its tools does not change a run in flight.
- **Journaled.** Every call is keyed by Legato's idempotency key (run, step, position, tool,
  arguments), passed to the server in `_meta` as `legato/idempotency_key`, and its result is
  recorded (`<p>:run:{id}:toolcalls`) before the step goes on: a redelivered or retried step
  reads the recorded result instead of calling again. Both keys are in the run's `:keys` set,
  so they expire with it.
- **Bounded.** A call has the server's timeout (the SDK's read timeout, and the runner's
  abandon-after), and its retries; an error result is a PermanentError the model gets to read.
- **Credentials** (`env`, `headers`) are `${VAR}` references expanded by the worker's process
  when it connects: never in a spec, a message or Redis.

Sessions are per process, held by its `Toolbox` (one event-loop thread, a session per server
opened on first use and kept; a broken one is opened again on the next call).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sys
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from legato.errors import PermanentError, SpecError, TransientError
from legato.tools.registry import IDEMPOTENCY_PARAM, ToolSpec

if TYPE_CHECKING:
    from legato.store import RunStore
    from legato.tools.toolbox import Toolbox

PREFIX = "mcp:"
META_KEY = "legato/idempotency_key"
_REF = re.compile(r"^mcp:([A-Za-z0-9_-]{1,40})(?:/([A-Za-z0-9_.-]{1,64}))?$")
_SEP = "__"


class McpServer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    command: list[str] | None = Field(None, min_length=1)
    url: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(30.0, gt=0)
    connect_timeout: float = Field(60.0, gt=0)  # starting (stdio) or reaching it, and its hello
    retries: int = Field(0, ge=0, le=10)
    approval: Literal["none", "required"] = "none"  # required: an agent waits for a person

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of command (stdio) or url (streamable HTTP)")
        if self.url is not None and self.env:
            raise ValueError("env is for stdio servers; an HTTP server takes headers")
        if self.command is not None and self.headers:
            raise ValueError("headers are for HTTP servers; a stdio server takes env")
        return self


def is_ref(name: str) -> bool:
    return name.startswith(PREFIX)


def parse_ref(name: str) -> tuple[str, str | None]:
    """`mcp:server` or `mcp:server/tool` -> (server, tool or None). ValueError if malformed."""
    match = _REF.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not mcp:<server> or mcp:<server>/<tool> (letters, digits, "
                         f"_ and -)")
    return match.group(1), match.group(2)


def is_model_name(name: str) -> bool:
    """Whether a tool name a model gave is an MCP tool's (`<server>__<tool>`)."""
    return _SEP in name


def model_name(server: str, tool: str) -> str:
    """The function name models see: `<server>__<tool>` (OpenAI's names allow no `:` or `/`)."""
    return f"{server}{_SEP}{tool}"


def load_servers(path: Path) -> dict[str, McpServer]:
    """The servers of an mcp.yaml (none if there is no file). Raises SpecError naming the
    file and the server."""
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {exc}", source=str(path)) from None
    servers = data.get("servers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise SpecError("expected `servers:` mapping names to a command or url",
                        source=str(path), path="servers")
    found = {}
    for name, body in servers.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", str(name)) or _SEP in str(name):
            raise SpecError(f"server name {name!r}: letters, digits, single _ and -",
                            source=str(path), path=f"servers.{name}")
        try:
            found[str(name)] = McpServer.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in (name, *first["loc"]))
            raise SpecError(first["msg"], source=str(path), path=f"servers.{where}") from None
    return found


def _value(result: Any) -> Any:
    """A CallToolResult as a tool's value: its structured content (a bare `{"result": x}`, what
    SDK servers wrap a plain return in, as x), else its text."""
    text = "\n".join(getattr(c, "text", "") for c in result.content if getattr(c, "text", None))
    if result.is_error:
        raise PermanentError(f"the MCP tool answered with an error: {text[:500]}")
    data = result.structured_content
    if isinstance(data, dict) and set(data) == {"result"}:
        return data["result"]
    return data if data is not None else text


class McpHub:
    """A process's MCP sessions: one event-loop thread, one session per server, opened on first
    use and kept; a broken one is dropped and opened again on the next call."""

    def __init__(self, servers: dict[str, McpServer]) -> None:
        self.servers = servers
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sessions: dict[str, Any] = {}  # server -> future of an open Client
        self._stops: dict[str, asyncio.Event] = {}

    def server(self, name: str) -> McpServer:
        try:
            return self.servers[name]
        except KeyError:
            known = ", ".join(sorted(self.servers)) or "none"
            raise PermanentError(f"no MCP server {name!r} in this worker's mcp.yaml (known: "
                                 f"{known})") from None

    def _run(self, coro: Any, timeout: float) -> Any:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="legato-mcp",
                                 daemon=True).start()
            loop = self._loop
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            future.cancel()
            raise TransientError(f"MCP call timed out after {timeout:g}s") from None

    def _target(self, cfg: McpServer) -> Any:
        from legato.models.credentials import expand  # the worker's own environment, now

        if cfg.command is not None:
            from mcp import StdioServerParameters, stdio_client

            params = StdioServerParameters(command=cfg.command[0], args=cfg.command[1:],
                                           env={k: expand(v) for k, v in cfg.env.items()} or None)
            # The server's stderr goes to the process's own (a worker's sys.stderr is Celery's
            # logging proxy, which has no file descriptor to hand a child).
            return stdio_client(params, errlog=sys.__stderr__ or sys.stderr)
        if not cfg.headers:
            return cfg.url
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        client = httpx2.AsyncClient(headers={k: expand(v) for k, v in cfg.headers.items()},
                                    timeout=cfg.timeout)
        return streamable_http_client(str(cfg.url), http_client=client)

    async def _client(self, name: str) -> Any:
        opened = self._sessions.get(name)
        if opened is None:
            from mcp import Client

            cfg = self.server(name)
            loop = asyncio.get_running_loop()
            opened = self._sessions[name] = loop.create_future()
            stop = self._stops[name] = asyncio.Event()

            async def hold(ready: asyncio.Future[Any]) -> None:
                try:
                    async with Client(self._target(cfg), read_timeout_seconds=cfg.timeout) as c:
                        ready.set_result(c)
                        await stop.wait()
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on it
                    if not ready.done():
                        ready.set_exception(exc)
                finally:
                    if self._sessions.get(name) is ready:
                        del self._sessions[name]

            loop.create_task(hold(opened))
        try:
            return await opened
        except FileNotFoundError as exc:
            raise PermanentError(f"MCP server {name!r}: cannot start {exc.filename!r}") from None
        except Exception as exc:
            raise TransientError(f"MCP server {name!r}: cannot connect: "
                                 f"{type(exc).__name__}: {exc}") from None

    def _drop(self, name: str) -> None:
        stop = self._stops.pop(name, None)
        self._sessions.pop(name, None)
        if stop is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(stop.set)

    def _connect(self, name: str) -> Any:
        """The server's open session, opened now if need be (within its connect_timeout)."""
        try:
            return self._run(self._client(name), self.server(name).connect_timeout)
        except TransientError:
            self._drop(name)
            raise

    def list_tools(self, name: str) -> list[dict[str, Any]]:
        """The server's tools now: name, description, input schema (sorted by name)."""
        cfg = self.server(name)
        client = self._connect(name)

        async def listing() -> list[dict[str, Any]]:
            tools, cursor = [], None
            while True:
                page = await client.list_tools(cursor=cursor, cache_mode="refresh")
                tools += [{"name": t.name, "description": t.description or "",
                           "input_schema": t.input_schema} for t in page.tools]
                cursor = page.next_cursor
                if not cursor:
                    return sorted(tools, key=lambda t: t["name"])

        try:
            return self._run(listing(), cfg.timeout)
        except TransientError:
            self._drop(name)
            raise

    def call(self, name: str, tool: str, args: dict[str, Any], key: str) -> Any:
        cfg = self.server(name)
        client = self._connect(name)

        async def calling() -> Any:
            return await client.call_tool(tool, args, read_timeout_seconds=cfg.timeout,
                                          meta={META_KEY: key})

        try:
            result = self._run(calling(), cfg.timeout + 1)
        except (TransientError, PermanentError):
            self._drop(name)
            raise
        except Exception as exc:  # the SDK's errors: the session may be broken
            self._drop(name)
            raise TransientError(f"MCP {name}/{tool}: {type(exc).__name__}: {exc}") from None
        return _value(result)

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        for name in list(self._stops):
            self._drop(name)
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)


# -- in a run: the pinned list, the specs, the journal -----------------------------------------


def pinned(store: RunStore, run_id: str, server: str, hub: McpHub) -> list[dict[str, Any]]:
    """The server's tool list as this run pinned it; the first to ask lists and pins it."""
    raw = store.pinned_tools(run_id, server)
    if raw is None:
        listing = json.dumps(hub.list_tools(server), sort_keys=True, ensure_ascii=False)
        raw = store.pin_tools(run_id, server, listing)
    return json.loads(raw)


def specs(ref: str, store: RunStore, run_id: str, box: Toolbox) -> list[ToolSpec]:
    """The tools `ref` names, from the run's pinned list, as ToolSpecs whose calls go to the
    server through the process's hub."""
    server, only = parse_ref(ref)
    hub = box.mcp
    cfg = hub.server(server)
    listing = pinned(store, run_id, server, hub)
    chosen = [t for t in listing if only is None or t["name"] == only]
    if only is not None and not chosen:
        names = ", ".join(t["name"] for t in listing) or "none"
        raise PermanentError(f"MCP server {server!r} has no tool {only!r} (pinned for this "
                             f"run: {names})")
    return [_spec(server, t, cfg, hub) for t in chosen]


def _spec(server: str, listed: dict[str, Any], cfg: McpServer, hub: McpHub) -> ToolSpec:
    tool = listed["name"]

    def call(**args: Any) -> Any:
        key = args.pop(IDEMPOTENCY_PARAM, "")
        return hub.call(server, tool, args, key)

    return ToolSpec(name=model_name(server, tool), fn=call,
                    description=listed.get("description") or f"{tool} (MCP server {server})",
                    parameters=listed.get("input_schema") or {"type": "object"},
                    timeout=cfg.connect_timeout + cfg.timeout + 2, retries=cfg.retries,
                    wants_idempotency_key=True, journaled=True, approval=cfg.approval)


def call_key(run_id: str, path: str, position: int, name: str, args: dict[str, Any]) -> str:
    """A journaled call's idempotency key: the same for the same call at the same place of a
    step, whatever ids the model gave it, on every redelivery or retry of the step."""
    canonical = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(f"{position}/{name}/{canonical}".encode()).hexdigest()
    return hashlib.sha256(f"{run_id}/{path}/{digest}".encode()).hexdigest()[:32]


def recorded(store: RunStore, run_id: str, key: str) -> tuple[bool, Any]:
    raw = store.tool_call(run_id, key)
    return (False, None) if raw is None else (True, json.loads(raw)["result"])


def record(store: RunStore, run_id: str, key: str, name: str, value: Any) -> None:
    entry = {"tool": name, "result": value}
    store.record_tool_call(run_id, key, json.dumps(entry, ensure_ascii=False, default=str))




def call_journaled(spec: ToolSpec, args: dict[str, Any], *, key: str, store: RunStore | None,
                   run_id: str, tools: Toolbox | None) -> Any:
    """`call_tool`, except that a journaled tool's result is read from the run's record when
    this call (its key) was made before, and recorded when it is made now."""
    from legato.tools.runner import call_tool

    if not spec.journaled or store is None:
        return call_tool(spec, args, key=key, tools=tools)
    done, value = recorded(store, run_id, key)
    if done:
        return value
    value = call_tool(spec, args, key=key, tools=tools)
    record(store, run_id, key, spec.name, value)
    return value
