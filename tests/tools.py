"""Tools registered for the tests (loaded by workers through LEGATO_TOOL_MODULES)."""

import socket
import tempfile
import time
from pathlib import Path

from celery import shared_task

from legato.tools import http_tool, tool


@tool
def explode(text: str) -> str:
    """Always fails: for failure-policy tests."""
    raise RuntimeError(f"exploded on {text[:20]!r}")


@tool
def nap(seconds: float) -> str:
    """Sleeps, then says so: for parallel tool calls."""
    time.sleep(seconds)
    return f"slept {seconds}"


@tool(timeout=0.3, retries=1)
def sleepy(seconds: float) -> str:
    """Takes longer than its timeout when asked to."""
    time.sleep(seconds)
    return "awake"


@tool(timeout=0.2, retries=0)
def stall(seconds: float) -> str:
    """Outlasts its 0.2 s timeout when asked to, and is not retried by the runner: a tool that
    times out quickly, for the failure matrix."""
    time.sleep(seconds)
    return "done"


@tool
def flaky_ledger(path: str, idempotency_key: str = "") -> int:
    """Appends its idempotency key to a file; fails the first time it is called."""
    with open(path, "a") as ledger:
        ledger.write(idempotency_key + "\n")
    lines = Path(path).read_text().splitlines()
    if len(lines) == 1:
        raise RuntimeError("the ledger was busy")
    return len(lines)


@tool(queue="legato.branch.technical")
def where_am_i() -> str:
    """Runs on the queue the tool names, whatever the step says."""
    return socket.gethostname()


@tool
def blob(size: int) -> str:
    """A string of `size` characters: for size limits."""
    return "x" * size


# An HTTP tool whose URL template takes the port: the fake model server's health check.
http_tool("local_health", url="http://127.0.0.1:{port}/health", timeout=2, retries=0)


@tool
def not_json(shape: str) -> object:
    """A value JSON cannot hold — a set, bytes or an object — and counts its calls in a file, so
    a test can see it ran once."""
    counter = Path(tempfile.gettempdir()) / f"legato-not-json-{shape}.calls"
    with counter.open("a") as calls:
        calls.write("x")
    return {"set": {1, 2}, "bytes": b"\x00", "object": object()}[shape]


@shared_task(name="tests.text_of")
def text_of(words: int) -> dict:
    """A user's own Celery task whose result a chain hands to `legato.submit` as the input."""
    return {"text": " ".join(f"word{i}" for i in range(words))}


@tool
def process_id() -> int:
    """The worker process the tool ran in: for the per-process runtime."""
    import os

    return os.getpid()


@tool
def leaky() -> str:
    """A tool whose error echoes a credential, as a careless client library's might."""
    raise RuntimeError("upstream said 401 for Authorization: Bearer sk-live-0123456789abcdefXYZ")


@tool(approval="required")
def refund(order: int, amount: float) -> str:
    """Refunds an order: a person approves each call first."""
    return f"refunded {amount:g} on order {order}"
