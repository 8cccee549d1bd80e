"""HTTP tools: calls over httpx, with a timeout and a host allow-list.

Only hosts listed in LEGATO_HTTP_TOOL_HOSTS (comma-separated; `*.example.com` matches its
subdomains) may be called; an empty list allows none. The list and the client are the calling
`Toolbox`'s (tools/toolbox.py: the worker's runtime makes it from its settings); outside a tool
call (plain library use) the list is read from the environment when a URL is checked.
Server errors and timeouts are transient (retried), other 4xx permanent; a POST carries the
call's idempotency key as `Idempotency-Key`.

    http_tool("order_status", url="https://shop.example.com/orders/{order_id}")
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx

from legato.errors import PermanentError, TransientError
from legato.settings import Settings
from legato.tools import toolbox
from legato.tools.registry import IDEMPOTENCY_PARAM, ToolSpec, register_spec, tool

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_BODY_CHARS = 64 * 1024


def allowed_hosts() -> list[str]:
    """The calling toolbox's allow-list; outside a tool call, LEGATO_HTTP_TOOL_HOSTS now."""
    box = toolbox.active()
    return list(box.hosts if box is not None else Settings.from_env().http_tool_hosts)


def check_url(url: str, hosts: Iterable[str] | None = None) -> None:
    """Refuse (PermanentError) a URL that is not http(s) or whose host is not in `hosts`
    (default: `allowed_hosts()`)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise PermanentError(f"refused URL {url!r}: only http(s) URLs with a host")
    for allowed in (allowed_hosts() if hosts is None else [h.lower() for h in hosts]):
        if host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])):
            return
    raise PermanentError(f"refused URL {url!r}: host {host!r} is not in LEGATO_HTTP_TOOL_HOSTS")


def request(method: str, url: str, *, timeout: float, json_body: Any = None,
            key: str = "") -> dict[str, Any]:
    box = toolbox.active()
    check_url(url, box.hosts if box is not None else None)
    headers = {"Idempotency-Key": key} if key and method != "GET" else {}
    try:
        if box is not None:
            response = box.http.request(method, url, json=json_body, headers=headers,
                                        timeout=timeout)
        else:  # called outside a tool call: a client for this request
            with httpx.Client(follow_redirects=False) as client:
                response = client.request(method, url, json=json_body, headers=headers,
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
