"""What tool calls share in a process: the count of their abandoned threads, the HTTP tools'
client and their allow-list — one `Toolbox`, made and closed by whoever owns the process (a
worker's runtime, workers/runtime.py), never a module global made on first use.

Each call runs on a thread of its own. A timed-out call cannot be killed (it is Python code); it
is abandoned — its result ignored — and holds nothing but its own thread: no pool slot, so a hung
tool never starves the others. Abandoned calls are counted per tool; at `max_abandoned` a tool's
new calls are refused until some end.

A worker's runtime installs its toolbox (`install`) so tool calls find it without it being handed
through every layer; a call passes it on to the tool's thread (`active()`, for HTTP tools). After a
fork the child's runtime installs its own: the parent's threads and sockets did not come along.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from legato.tools.mcp import McpHub

MAX_ABANDONED = 32  # timed-out calls of one tool still running in a process, at most


class Toolbox:
    def __init__(self, *, hosts: Iterable[str] = (), max_abandoned: int = MAX_ABANDONED,
                 mcp_file: Path | None = None) -> None:
        self.hosts = tuple(h.strip().lower() for h in hosts if h.strip())
        self.max_abandoned = max_abandoned
        self.mcp_file = mcp_file
        self._abandoned: Counter[str] = Counter()
        self._http: httpx.Client | None = None
        self._mcp: McpHub | None = None
        self._lock = threading.Lock()

    def abandoned(self, name: str) -> int:
        """Timed-out calls of tool `name` still running."""
        with self._lock:
            return self._abandoned[name]

    def start(self, name: str, fn: Callable[..., Any], args: dict[str, Any]) -> Call:
        """`fn(**args)` on a thread of its own, with this toolbox active there."""
        call = Call(self, name)

        def run() -> None:
            try:
                call.future.set_result(run_in(self, fn, args))
            except BaseException as exc:  # handed to the caller, who decides what it means
                call.future.set_exception(exc)
            finally:
                call.ended()

        threading.Thread(target=run, name=f"legato-tool-{name}", daemon=True).start()
        return call

    @property
    def http(self) -> httpx.Client:
        """HTTP tools' client: redirects are not followed (a redirect could leave the list)."""
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(follow_redirects=False)
            return self._http

    @property
    def mcp(self) -> McpHub:
        """The MCP sessions of this process, over the servers of its mcp.yaml (read once)."""
        from legato.errors import PermanentError, SpecError
        from legato.tools.mcp import McpHub, load_servers

        with self._lock:
            if self._mcp is None:
                try:
                    servers = load_servers(self.mcp_file) if self.mcp_file else {}
                except SpecError as exc:
                    raise PermanentError(f"this worker's MCP servers: {exc}") from None
                self._mcp = McpHub(servers)
            return self._mcp

    def close(self) -> None:
        """Close the clients and MCP sessions (a call still running finishes on its thread)."""
        with self._lock:
            client, self._http = self._http, None
            hub, self._mcp = self._mcp, None
        if client is not None:
            client.close()
        if hub is not None:
            hub.close()


class Call:
    """One tool call on its thread: its future, and whether it was given up on."""

    def __init__(self, box: Toolbox, name: str) -> None:
        self.box, self.name = box, name
        self.future: Future[Any] = Future()
        self._given_up = False

    def give_up(self) -> None:
        """The caller stopped waiting: count the call as abandoned until its thread ends."""
        with self.box._lock:
            if not self.future.done():  # it may have ended just now
                self._given_up = True
                self.box._abandoned[self.name] += 1

    def ended(self) -> None:
        with self.box._lock:
            if self._given_up:
                self.box._abandoned[self.name] -= 1


_installed: Toolbox | None = None
_active: ContextVar[Toolbox | None] = ContextVar("legato_toolbox", default=None)


def install(toolbox: Toolbox | None) -> None:
    """Make `toolbox` the one this process's tool calls use (None: none is)."""
    global _installed
    _installed = toolbox


def installed() -> Toolbox | None:
    return _installed


def active() -> Toolbox | None:
    """The toolbox of the tool call running in this thread, if any."""
    return _active.get()


def run_in(box: Toolbox, fn: Callable[..., Any], args: dict[str, Any]) -> Any:
    """`fn(**args)` with `box` as the active toolbox (on a tool thread: see runner.py)."""
    token = _active.set(box)
    try:
        return fn(**args)
    finally:
        _active.reset(token)
