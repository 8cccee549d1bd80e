"""Ways to run the fake server: blocking (`run`, `main`) or on a background thread (tests)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from legato.local.fake_model.script import load_script
from legato.local.fake_model.server import FakeModelServer

DEFAULT_PORT = 8089


def _raise_fd_limit(wanted: int = 65536) -> None:
    """Let one process hold thousands of idle connections: soft RLIMIT_NOFILE up to hard."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def _serve(server: FakeModelServer) -> None:
    await server.start()
    print(f"fake-model listening on {server.url}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await server.stop()


def run(host: str = "127.0.0.1", port: int = DEFAULT_PORT, script_path: str | None = None) -> None:
    """Serve until SIGINT/SIGTERM. Prints `fake-model listening on http://HOST:PORT/v1` first."""
    script = load_script(script_path) if script_path else None
    _raise_fd_limit()
    asyncio.run(_serve(FakeModelServer(script, host, port)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m legato.local.fake_model",
        description="Fault-injecting, OpenAI-compatible fake model server.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--script", default=None, help="rules/faults file (.yaml/.yml/.json)")
    args = parser.parse_args(argv)
    try:
        run(args.host, args.port, args.script)
    except (ValueError, OSError) as exc:
        print(f"fake-model: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


class ThreadedServer:
    """A FakeModelServer running on its own event loop in a daemon thread."""

    def __init__(self, server: FakeModelServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="fake-model", daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self.server.stop())
            self._loop.close()

    def start(self, timeout: float = 10.0) -> ThreadedServer:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("fake model server did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> ThreadedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(
    script: Mapping[str, Any] | None = None, port: int = 0, host: str = "127.0.0.1"
) -> ThreadedServer:
    """Start a server on a background thread; returns once it listens (.url, .port, .stop())."""
    return ThreadedServer(FakeModelServer(script, host, port)).start()
