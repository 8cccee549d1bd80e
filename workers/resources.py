"""Per-process resources, made once and shared by every task in the process (and its threads)."""

from __future__ import annotations

import threading

import httpx

from pipeline.settings import get_settings
from pipeline.store import RunStore

_lock = threading.Lock()
_http: httpx.Client | None = None
_store: RunStore | None = None


def http() -> httpx.Client:
    """The process's HTTP client: one connection pool for every model call in the process."""
    global _http
    if _http is None:
        with _lock:
            if _http is None:
                s = get_settings()
                limits = httpx.Limits(max_connections=s.http_max_connections,
                                      max_keepalive_connections=s.http_max_connections)
                _http = httpx.Client(timeout=s.http_timeout, limits=limits)
    return _http


def store() -> RunStore:
    global _store
    if _store is None:
        with _lock:
            if _store is None:
                s = get_settings()
                _store = RunStore.from_url(s.redis_url, s.key_prefix)
    return _store


def reset() -> None:
    global _http, _store
    with _lock:
        _http = None
        _store = None
