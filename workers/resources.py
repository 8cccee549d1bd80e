"""Per-process resources, made once and shared by every task in the process (and its threads).

A forked child (prefork pool) must not use its parent's: workers/app.py calls `reset()` in
`worker_process_init`, and the child makes its own on first use.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import httpx

from legato.models import Gateway, RunScope
from legato.models.cache import MODES, Mode
from legato.models.transport import HttpxTransport, LoopTransport, Transport
from legato.settings import get_settings
from legato.spec import Pipeline
from legato.store import RunStore
from legato.voting import Ballot

_lock = threading.Lock()
_http: httpx.Client | None = None
_store: RunStore | None = None
_gateway: Gateway | None = None
_transport: Transport | None = None
_batch_pool: ThreadPoolExecutor | None = None


def http() -> httpx.Client:
    """The process's sync HTTP client (the model transport when LEGATO_MODEL_TRANSPORT=httpx)."""
    global _http
    if _http is None:
        with _lock:
            if _http is None:
                s = get_settings()
                limits = httpx.Limits(max_connections=s.http_max_connections,
                                      max_keepalive_connections=s.http_max_connections)
                _http = httpx.Client(timeout=s.http_timeout, limits=limits)
    return _http


def transport() -> Transport:
    """The process's model transport: every model call in the process goes through it.

    LEGATO_MODEL_TRANSPORT=aiohttp (default): one event-loop thread with one aiohttp session,
    calling threads parked on futures; =httpx: the shared sync client `http()`.
    """
    global _transport
    if _transport is None:
        s = get_settings()
        client = http() if s.model_transport == "httpx" else None  # http() takes _lock itself
        with _lock:
            if _transport is None:
                _transport = (HttpxTransport(client) if client is not None else
                              LoopTransport(s.http_max_connections, s.http_timeout))
    return _transport


def gateway() -> Gateway:
    """The process's model gateway: every model call's policies, over `transport()` and Redis."""
    global _gateway
    if _gateway is None:
        client, redis, s = transport(), store().redis, get_settings()
        with _lock:
            if _gateway is None:
                cache = os.environ.get("LEGATO_CACHE", "off")
                mode = cast(Mode, cache if cache in MODES else "off")
                _gateway = Gateway(client, redis, s.key_prefix, default_cache=mode)
    return _gateway


def run_scope(run_id: str, spec: Pipeline) -> RunScope:
    """What the gateway needs of a run: its budget (and when it began), its cache mode."""
    started = None
    if spec.budget is not None and spec.budget.deadline_seconds is not None:
        started = store().get_run(run_id).created_at
    return RunScope(run_id, spec.budget, spec.cache, started)


def store() -> RunStore:
    global _store
    if _store is None:
        with _lock:
            if _store is None:
                s = get_settings()
                _store = RunStore.from_url(s.redis_url, s.key_prefix)
    return _store


def ballot() -> Ballot:
    """Vote tallies for quorum votes (stateless over the store's Redis client)."""
    s = store()
    return Ballot(s.redis, s.keys)


def batch_pool() -> ThreadPoolExecutor:
    """The threads a batch task runs its members on (LEGATO_BATCH_CONCURRENCY): their model
    calls wait on the transport's event loop, so a thread costs little."""
    global _batch_pool
    if _batch_pool is None:
        with _lock:
            if _batch_pool is None:
                _batch_pool = ThreadPoolExecutor(get_settings().batch_concurrency,
                                                 thread_name_prefix="legato-batch")
    return _batch_pool


def reset() -> None:
    """Forget every resource. The loop transport is closed if this process made it; one inherited
    through a fork is only dropped (its thread and sockets are the parent's)."""
    global _http, _store, _gateway, _transport, _batch_pool
    with _lock:
        old = _transport
        _batch_pool = None  # a forked child has none of the parent's threads
        _http = None
        _store = None
        _gateway = None
        _transport = None
    if isinstance(old, LoopTransport):
        old.close()
