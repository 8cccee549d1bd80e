"""Small networking helpers for the embedded dev stack: free ports and readiness waits."""

from __future__ import annotations

import socket
import time

import httpx

_POLL_S = 0.05


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now.

    The OS picks it (bind to port 0); there is a small race until the caller binds it,
    which is acceptable for tests and dev servers.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Block until host:port accepts TCP connections, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing accepted connections on {host}:{port} within {timeout:g}s")
        time.sleep(_POLL_S)


def wait_for_http(url: str, timeout: float) -> httpx.Response:
    """Block until GET url answers with a status below 500; return that response.

    Connection errors and 5xx (servers that listen before they are ready) are retried until
    the deadline; then TimeoutError names the last thing seen.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt"
    with httpx.Client(timeout=5.0) as client:
        while True:
            try:
                resp = client.get(url)
                if resp.status_code < 500:
                    return resp
                last = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{url} did not answer within {timeout:g}s (last: {last})")
            time.sleep(_POLL_S * 4)
