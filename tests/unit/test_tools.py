"""The tool registry: JSON schemas for function calling, options, idempotency keys."""

from __future__ import annotations

import threading
import time

import pytest

from legato.errors import PermanentError, TransientError
from legato.loader import resolve
from legato.spec import Agent, ModelConfig, Pipeline
from legato.tools import get_tool, tool
from legato.tools.runner import call_tool, idempotency_key
from legato.tools.toolbox import MAX_ABANDONED, Toolbox


@tool(name="unit_lookup", timeout=2.5, retries=2, queue="legato.tools.slow")
def _lookup(order_id: str, limit: int = 3, idempotency_key: str = "") -> dict:
    """Look up an order."""
    return {"order": order_id, "limit": limit, "key": idempotency_key}


def test_a_tool_describes_itself_for_function_calling():
    spec = get_tool("unit_lookup")
    described = spec.openai()
    assert described["type"] == "function"
    fn = described["function"]
    assert fn["name"] == "unit_lookup" and fn["description"] == "Look up an order."
    assert fn["parameters"]["properties"] == {
        "order_id": {"title": "Order Id", "type": "string"},
        "limit": {"default": 3, "title": "Limit", "type": "integer"},
    }
    assert fn["parameters"]["required"] == ["order_id"]
    assert fn["parameters"]["additionalProperties"] is False  # the key is Legato's to give
    assert (spec.timeout, spec.retries, spec.queue) == (2.5, 2, "legato.tools.slow")


def test_calling_a_tool_checks_arguments_and_hands_it_the_idempotency_key():
    spec = get_tool("unit_lookup")
    key = idempotency_key("run1", "step/a", "call_7")
    assert key == idempotency_key("run1", "step/a", "call_7") != idempotency_key("run1", "b", "0")
    assert call_tool(spec, {"order_id": "A1", "limit": "5"}, key=key) == {
        "order": "A1", "limit": 5, "key": key}
    with pytest.raises(PermanentError, match="refused its arguments"):
        call_tool(spec, {"limit": 1}, key=key)


def test_a_slow_tool_times_out_as_a_transient_error():
    @tool(name="unit_slow", timeout=0.05, retries=1)
    def slow() -> str:
        import time

        time.sleep(0.5)
        return "late"

    with pytest.raises(TransientError, match="timed out after 0.05s"):
        call_tool(get_tool("unit_slow"), {}, key="k")


def test_an_agent_naming_an_unknown_tool_is_a_spec_error():
    from legato.errors import SpecError

    agent = Pipeline(name="a", steps=[Agent(id="a", model="m", prompt="p",
                                            tools=["word_count", "no_such_tool"])])
    with pytest.raises(SpecError) as info:
        resolve(agent, {"m": ModelConfig(base_url="http://x/v1", model="m")})
    assert info.value.path == "steps[0].tools[1]"


@pytest.mark.parametrize(("hosts", "url", "allowed"), [
    ("api.example.com", "https://api.example.com/v1/x", True),
    ("api.example.com", "https://evil.example.com/", False),
    ("*.example.com", "https://deep.api.example.com/", True),
    ("*.example.com", "https://example.com.evil.net/", False),
    ("", "https://api.example.com/", False),
    ("api.example.com", "file:///etc/passwd", False),
])
def test_http_tools_obey_the_host_allow_list(monkeypatch, hosts, url, allowed):
    from legato.tools.http import check_url

    monkeypatch.setenv("LEGATO_HTTP_TOOL_HOSTS", hosts)
    if allowed:
        check_url(url, resolve=_public_dns)
    else:
        with pytest.raises(PermanentError, match="refused URL"):
            check_url(url, resolve=_public_dns)


def _public_dns(host: str, port: int, **_: object) -> list[tuple]:
    """No network here: every name resolves to one public address."""
    return [(2, 1, 6, "", ("93.184.216.34", port))]


def _dns(address: str):
    def resolve(host: str, port: int, **_: object) -> list[tuple]:
        return [(2, 1, 6, "", (address, port))]

    return resolve


@pytest.mark.parametrize(("hosts", "url", "allowed"), [
    ("https://api.example.com", "https://api.example.com/x", True),
    ("https://api.example.com", "http://api.example.com/x", False),  # scheme
    ("https://api.example.com", "https://api.example.com:8443/x", False),  # port
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080/x", True),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8081/x", False),
    ("http://127.0.0.1:*", "http://127.0.0.1:9999/x", True),
    ("http://localhost:*", "http://localhost:9999/x", False),  # a name resolving to loopback
])
def test_the_allow_list_matches_scheme_host_and_port(monkeypatch, hosts, url, allowed):
    from legato.tools.http import check_url

    monkeypatch.setenv("LEGATO_HTTP_TOOL_HOSTS", hosts)
    resolve = _dns("127.0.0.1") if "localhost" in url else _public_dns
    if allowed:
        check_url(url, resolve=resolve)
    else:
        with pytest.raises(PermanentError, match="refused URL"):
            check_url(url, resolve=resolve)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "192.168.0.10", "172.16.5.4", "169.254.169.254", "::1",
    "fd00::1", "fe80::1", "0.0.0.0", "100.64.0.1",
])
def test_an_allowed_name_that_resolves_inside_is_refused(monkeypatch, address):
    from legato.tools.http import check_url

    monkeypatch.setenv("LEGATO_HTTP_TOOL_HOSTS", "https://api.example.com")
    with pytest.raises(PermanentError, match="not a public address"):
        check_url("https://api.example.com/x", resolve=_dns(address))


def test_placeholders_are_url_encoded_whole():
    from legato.tools import http

    seen: list[str] = []
    original = http.request
    http.request = lambda method, url, **_: seen.append(url) or {}  # type: ignore[assignment]
    try:
        spec = http.http_tool("unit_orders", url="https://shop.example.com/orders/{order_id}?v=1")
        call_tool(spec, {"order_id": "../admin?x=1&y=2#z"}, key="k")
    finally:
        http.request = original
    assert seen == ["https://shop.example.com/orders/..%2Fadmin%3Fx%3D1%26y%3D2%23z?v=1"]


def test_hung_calls_hold_no_pool_slot_and_are_capped_per_tool():
    release = threading.Event()

    @tool(name="unit_hangs", timeout=0.02)
    def hangs() -> str:
        release.wait(30)
        return "late"

    @tool(name="unit_quick")
    def quick() -> str:
        return "quick"

    box = Toolbox()  # a worker's runtime holds one per process
    try:
        for _ in range(MAX_ABANDONED):  # more than a thread pool would have had spare
            with pytest.raises(TransientError, match="timed out"):
                call_tool(get_tool("unit_hangs"), {}, key="k", tools=box)
        assert box.abandoned("unit_hangs") == MAX_ABANDONED
        with pytest.raises(TransientError, match="timed-out calls still running"):
            call_tool(get_tool("unit_hangs"), {}, key="k", tools=box)
        started = time.monotonic()
        assert call_tool(get_tool("unit_quick"), {}, key="k", tools=box) == "quick"  # not starved
        assert time.monotonic() - started < 0.5
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while box.abandoned("unit_hangs") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert box.abandoned("unit_hangs") == 0  # the hung calls ended and were counted out


def test_redirects_are_followed_only_where_the_allow_list_allows(monkeypatch):
    import http.server

    from legato.tools.http import request

    class Redirects(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            target = {"/inside": "/ok", "/outside": "http://127.0.0.1:1/metadata",
                      "/loop": "/loop"}.get(self.path)
            self.send_response(302 if target else 200)
            if target:
                self.send_header("Location", target)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            if not target:
                self.wfile.write(b'{"reached": true}')

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirects)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("LEGATO_HTTP_TOOL_HOSTS", base)
    try:
        assert request("GET", f"{base}/inside", timeout=5)["body"] == {"reached": True}
        with pytest.raises(PermanentError, match="not as http on port 1"):
            request("GET", f"{base}/outside", timeout=5)
        with pytest.raises(PermanentError, match="more than 5 redirects"):
            request("GET", f"{base}/loop", timeout=5)
    finally:
        server.shutdown()
