"""HTTP tools: calls over httpx, with a timeout and an allow-list of origins.

Only origins listed in LEGATO_HTTP_TOOL_HOSTS may be called (comma-separated
`[scheme://]host[:port]`: the scheme defaults to https and the port to the scheme's; `*.example.com`
matches its subdomains, `:*` any port); an empty list allows none. A host *name* must not resolve
to a loopback, private, link-local (cloud metadata) or otherwise reserved address — an IP written
in the list is the operator's explicit consent to that address. Redirects are followed (at most
MAX_REDIRECTS) only to URLs that pass the same checks. `{placeholders}` are URL-encoded, so an
argument cannot rewrite the path or query. Server errors and timeouts are transient (retried),
other 4xx permanent; a POST carries the call's idempotency key as `Idempotency-Key`. The list
and the client are the calling `Toolbox`'s (tools/toolbox.py: the worker's runtime makes it from
its settings); outside a tool call (plain library use) the list is read from the environment.

    http_tool("order_status", url="https://shop.example.com/orders/{order_id}")

Completion webhooks (pipeline/callbacks.py) go through the same checks and `request`, with their
own list (LEGATO_WEBHOOK_HOSTS): `origins=` and `setting=` say which.

Left open: the address is checked when the URL is, and httpx resolves the name again to connect,
so a DNS answer that changes in between (rebinding) is not caught.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from legato.errors import PermanentError, TransientError
from legato.settings import Settings
from legato.tools import toolbox
from legato.tools.registry import IDEMPOTENCY_PARAM, ToolSpec, register_spec, tool

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_BODY_CHARS = 64 * 1024
MAX_REDIRECTS = 5
_DEFAULT_PORTS = {"http": 80, "https": 443}
HOSTS_SETTING = "LEGATO_HTTP_TOOL_HOSTS"  # the list HTTP tools obey, named in refusals


@dataclass(frozen=True)
class Origin:
    """One allow-list entry: a scheme, a host (or `*.domain`) and a port (None: any)."""

    scheme: str
    host: str
    port: int | None

    @classmethod
    def parse(cls, entry: str, *, setting: str = HOSTS_SETTING) -> Origin:
        scheme, sep, rest = entry.strip().lower().partition("://")
        if not sep:
            scheme, rest = "https", scheme
        host, _, port = rest.rstrip("/").rpartition(":") if ":" in rest else (rest, "", "")
        host = host.strip("[]")
        if scheme not in _DEFAULT_PORTS or not host or not (port in ("", "*") or port.isdigit()):
            raise ValueError(f"{setting}: {entry!r} is not [scheme://]host[:port]")
        if port == "*":
            return cls(scheme, host, None)
        return cls(scheme, host, int(port) if port else _DEFAULT_PORTS[scheme])

    def admits(self, scheme: str, host: str, port: int) -> bool:
        if scheme != self.scheme or (self.port is not None and port != self.port):
            return False
        return host == self.host or (self.host.startswith("*.") and host.endswith(self.host[1:]))


def parse_origins(entries: Any, *, setting: str = HOSTS_SETTING) -> list[Origin]:
    return [Origin.parse(entry, setting=setting) for entry in entries]


def allowed_origins() -> list[Origin]:
    """The calling toolbox's allow-list; outside a tool call, LEGATO_HTTP_TOOL_HOSTS now."""
    box = toolbox.active()
    entries = box.hosts if box is not None else Settings.from_env().http_tool_hosts
    return parse_origins(entries)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address.is_global and not address.is_multicast


def check_origin(url: str, origins: list[Origin], *,
                 setting: str = HOSTS_SETTING) -> tuple[str, int]:
    """Refuse (PermanentError) a URL that is not http(s) or whose origin is not in `origins`;
    return its host and port. No name is resolved."""
    parts = urlsplit(url)
    try:
        host = (parts.hostname or "").lower()
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
    except ValueError:
        raise PermanentError(f"refused URL {url!r}: a bad port") from None
    if parts.scheme not in _DEFAULT_PORTS or not host:
        raise PermanentError(f"refused URL {url!r}: only http(s) URLs with a host")
    if not any(o.admits(parts.scheme, host, port) for o in origins):
        if not any(o.admits(o.scheme, host, o.port or port) for o in origins):
            raise PermanentError(f"refused URL {url!r}: host {host!r} is not in {setting}")
        raise PermanentError(f"refused URL {url!r}: host {host!r} is allowed, but not as "
                             f"{parts.scheme} on port {port} ({setting})")
    return host, port


def check_url(url: str, *, origins: list[Origin] | None = None, setting: str = HOSTS_SETTING,
              resolve: Any = socket.getaddrinfo) -> None:
    """Refuse (PermanentError) a URL that is not http(s), whose origin is not allowed (by
    `origins`, else HTTP tools' list), or whose host name resolves to an address that is not
    public."""
    host, port = check_origin(url, allowed_origins() if origins is None else origins,
                              setting=setting)
    if _ip(host) is not None:
        return  # an address the operator wrote into the list
    try:
        found = {str(info[4][0]) for info in resolve(host, port, type=socket.SOCK_STREAM)}
    except OSError as exc:
        raise TransientError(f"cannot resolve {host!r}: {exc}") from None
    for address in sorted(found):
        resolved = _ip(address.split("%", 1)[0])
        if resolved is None or not _public(resolved):
            raise PermanentError(f"refused URL {url!r}: {host!r} resolves to {address}, "
                                 f"which is not a public address")


def request(method: str, url: str, *, timeout: float, json_body: Any = None,
            key: str = "", content: bytes | None = None, headers: dict[str, str] | None = None,
            origins: list[Origin] | None = None, setting: str = HOSTS_SETTING,
            client: httpx.Client | None = None) -> dict[str, Any]:
    """One call, redirects followed (each URL checked) up to MAX_REDIRECTS. `content` is sent as
    the exact body (a signed webhook's); `origins`/`setting`: another allow-list than HTTP
    tools'; `client`: one that does not follow redirects itself."""
    box = toolbox.active()
    headers = dict(headers or {})
    if key and method != "GET":
        headers["Idempotency-Key"] = key
    own_client = client is None and box is None
    if client is None:
        client = box.http if box is not None else httpx.Client(follow_redirects=False)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url, origins=origins, setting=setting)
            try:
                response = client.request(method, url, json=json_body, content=content,
                                          headers=headers, timeout=timeout,
                                          follow_redirects=False)
            except httpx.TimeoutException as exc:
                raise TransientError(f"{method} {url} timed out") from exc
            except httpx.TransportError as exc:
                raise TransientError(f"{method} {url} failed: {exc!r}") from exc
            if not response.is_redirect:
                break
            url = urljoin(url, response.headers["location"])
            if response.status_code in (301, 302, 303) and method != "HEAD":
                method, json_body, content = "GET", None, None  # as browsers and httpx do
        else:
            raise PermanentError(f"{method} {url}: more than {MAX_REDIRECTS} redirects")
    finally:
        if own_client:  # called outside a tool call: a client for this request only
            client.close()
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
        # Encoded whole (`/`, `?`, `#`, `&` included): an argument is one value, never more URL.
        target = _PLACEHOLDER.sub(lambda m: quote(str(args[m.group(1)]), safe=""), url)
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
