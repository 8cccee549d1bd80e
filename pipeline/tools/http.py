"""HTTP tools: calls over httpx, with a timeout and a host allow-list.

Only hosts listed in LEGATO_HTTP_TOOL_HOSTS (comma-separated; `*.example.com` matches its
subdomains) may be called; an empty list allows none. Server errors and timeouts are transient
(retried), other 4xx permanent; a POST carries the call's idempotency key as `Idempotency-Key`.

    http_tool("order_status", url="https://shop.example.com/orders/{order_id}")
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any
from urllib.parse import urlsplit

import httpx

from legato.errors import PermanentError, TransientError
from legato.tools.registry import IDEMPOTENCY_PARAM, ToolSpec, register_spec, tool

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_BODY_CHARS = 64 * 1024

_client: httpx.Client | None = None
_lock = threading.Lock()


def _http() -> httpx.Client:
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                _client = httpx.Client(follow_redirects=False)
    return _client


def allowed_hosts() -> list[str]:
    raw = os.environ.get("LEGATO_HTTP_TOOL_HOSTS", "")
    return [h.strip().lower() for h in raw.split(",") if h.strip()]


def check_url(url: str) -> None:
    """Refuse (PermanentError) a URL that is not http(s) or whose host is not allowed."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise PermanentError(f"refused URL {url!r}: only http(s) URLs with a host")
    for allowed in allowed_hosts():
        if host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])):
            return
    raise PermanentError(f"refused URL {url!r}: host {host!r} is not in LEGATO_HTTP_TOOL_HOSTS")


def request(method: str, url: str, *, timeout: float, json_body: Any = None,
            key: str = "") -> dict[str, Any]:
    check_url(url)
    headers = {"Idempotency-Key": key} if key and method != "GET" else {}
    try:
        response = _http().request(method, url, json=json_body, headers=headers,
                                   timeout=timeout)
    except httpx.TimeoutException as exc:
        raise TransientError(f"{method} {url} timed out") from exc
    except httpx.TransportError as exc:
        raise TransientError(f"{method} {url} failed: {exc!r}") from exc
    if response.status_code == 429 or response.status_code >= 500:
        raise TransientError(f"{method} {url}: HTTP {response.status_code}",
                             status_code=response.status_code)
    if response.status_code >= 400:
        raise PermanentError(f"{method} {url}: HTTP {response.status_code}: "
                             f"{response.text[:200]}", status_code=response.status_code)
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text[:MAX_BODY_CHARS]
    return {"status": response.status_code, "body": body}


def http_tool(name: str, *, url: str, method: str = "GET", timeout: float = 10.0,
              retries: int = 1, queue: str | None = None, description: str = "") -> ToolSpec:
    """Register a tool that calls `url`, whose `{placeholders}` are the tool's arguments (plus
    `body`, an object, for methods other than GET)."""
    names = _PLACEHOLDER.findall(url)
    properties: dict[str, Any] = {n: {"type": "string"} for n in names}
    if method != "GET":
        properties["body"] = {"type": "object"}

    def call(**args: Any) -> dict[str, Any]:
        key = args.pop(IDEMPOTENCY_PARAM, "")
        missing = [n for n in names if n not in args]
        if missing:
            raise PermanentError(f"tool {name!r} needs {missing}")
        target = _PLACEHOLDER.sub(lambda m: str(args[m.group(1)]), url)
        return request(method, target, timeout=timeout, json_body=args.get("body"), key=key)

    spec = ToolSpec(name=name, fn=call, description=description or f"{method} {url}",
                    parameters={"type": "object", "properties": properties, "required": names,
                                "additionalProperties": False},
                    timeout=timeout + 1, retries=retries, queue=queue,
                    wants_idempotency_key=True)
    return register_spec(spec)


@tool(timeout=11, retries=1)
def http_get(url: str) -> dict[str, Any]:
    """GET a URL on an allowed host; returns its status and body (JSON, or text)."""
    return request("GET", url, timeout=10.0)
