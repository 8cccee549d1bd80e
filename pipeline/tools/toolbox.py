"""What tool calls share in a process: the threads they run on, the HTTP tools' client and their
host allow-list — one `Toolbox`, made and closed by whoever owns the process (a worker's runtime,
workers/runtime.py), never a module global made on first use.

A worker's runtime installs its toolbox (`install`) so tool calls find it without it being handed
through every layer; a call passes it on to the tool's thread (`active()`, for HTTP tools). After a
fork the child's runtime installs its own: the parent's threads and sockets did not come along.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

import httpx

MAX_TOOL_THREADS = 64


class Toolbox:
    def __init__(self, *, hosts: Iterable[str] = (), max_threads: int = MAX_TOOL_THREADS) -> None:
        self.hosts = tuple(h.strip().lower() for h in hosts if h.strip())
        self.max_threads = max_threads
        self._pool: ThreadPoolExecutor | None = None
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The threads tools run on (so a call that times out can be abandoned)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_threads, thread_name_prefix="legato-tool")
            return self._pool

    @property
    def http(self) -> httpx.Client:
        """HTTP tools' client: redirects are not followed (a redirect could leave the list)."""
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(follow_redirects=False)
            return self._http

    def close(self) -> None:
        """Let the threads go (a call still running finishes on its own) and close the client."""
        with self._lock:
            pool, client, self._pool, self._http = self._pool, self._http, None, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if client is not None:
            client.close()


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
