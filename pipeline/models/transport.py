"""How a model call's one POST reaches the wire: a `Transport`, returning a `WireResponse`.

Two transports, one contract (`post`; transport failures raised as `TransientError`):

- `HttpxTransport` wraps a sync `httpx.Client`: plain library use and unit tests
  (`httpx.MockTransport`). Any `httpx.Client` passed where a transport is expected is wrapped by
  `as_transport`, so callers that hand in a client keep working.
- `LoopTransport` is what workers use: one daemon thread per process runs an asyncio event loop
  with one `aiohttp.ClientSession`, and the calling (pool) threads park while their calls run.
  httpcore's sync pool costs 2–9 ms of CPU per call at 100–500 connections (its bookkeeping grows
  with the pool); this costs ~0.3–0.4 ms, flat up to 500 in flight (docs/benchmarks.md, "The
  model-call path"). `submit` lets one thread start many calls and wait on them together. `post`
  hands its call over more cheaply than `submit` does: calls that arrive while the loop has not yet
  taken the last ones join them (one wakeup of the loop for the lot, not one each), and the
  caller waits on a bare lock, not a future's condition.

A streamed answer (`on_chunk`): a 200's body is handed to `on_chunk` piece by piece as it
arrives (on the loop's thread, for `LoopTransport`: it must be quick) and the returned body is
empty; any other status is read whole as ever. A connection lost mid-answer is a
`TransientError` ("stream cut off"), and so is whatever `on_chunk` raises as one.

Status codes are not judged here: `wire.send` maps them to Legato's errors.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextvars
import json as jsonlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, runtime_checkable

import aiohttp
import httpx

from legato import bridge
from legato.errors import TransientError

log = logging.getLogger(__name__)

# How much longer than its own timeout a caller waits for a loop call's future before giving up
# on it: the loop enforces the timeout itself, this only guards against a wedged loop.
SAFETY_MARGIN = 5.0


def _dumps(body: dict[str, Any]) -> bytes:
    """The body's bytes exactly as httpx writes them (compact, UTF-8, no NaN)."""
    return jsonlib.dumps(body, ensure_ascii=False, separators=(",", ":"),
                         allow_nan=False).encode()


@dataclass(frozen=True)
class WireResponse:
    """A finished HTTP answer. Header names are stored lower-cased: look up with `header()`."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", {k.lower(): v for k, v in self.headers.items()})

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body as JSON; ValueError if it is not."""
        return jsonlib.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


OnChunk = Callable[[bytes], None]


@runtime_checkable
class Transport(Protocol):
    def post(self, url: str, *, json: dict[str, Any], headers: dict[str, str],
             timeout: float | None, on_chunk: OnChunk | None = None) -> WireResponse:
        """POST `json`; `timeout` None is the transport's default (never "no timeout").
        `on_chunk`: a 200's body goes there as it arrives (the response's body is then empty).
        Raises TransientError on timeouts and connection failures."""
        ...


# What the model functions accept: a transport, or a plain httpx client (wrapped on use).
Client: TypeAlias = Transport | httpx.Client


def timed_out(exc: BaseException) -> TransientError:
    return TransientError(f"model call timed out: {type(exc).__name__}")


def unreachable(exc: BaseException) -> TransientError:
    return TransientError(f"model server unreachable: {exc!r}")


def cut_off(exc: BaseException) -> TransientError:
    return TransientError(f"model stream cut off: {exc!r}")


class HttpxTransport:
    """A sync httpx client as a Transport. The client stays the caller's to close."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def post(self, url: str, *, json: dict[str, Any], headers: dict[str, str],
             timeout: float | None, on_chunk: OnChunk | None = None) -> WireResponse:
        chosen = httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
        streaming = False
        try:
            if on_chunk is None:
                response = self.client.post(url, json=json, headers=headers, timeout=chosen)
                return WireResponse(response.status_code, dict(response.headers.items()),
                                    response.content)
            with self.client.stream("POST", url, json=json, headers=headers,
                                    timeout=chosen) as response:
                if response.status_code != 200:
                    return WireResponse(response.status_code, dict(response.headers.items()),
                                        response.read())
                streaming = True
                for piece in response.iter_bytes():
                    on_chunk(piece)
                return WireResponse(200, dict(response.headers.items()), b"")
        except httpx.TimeoutException as exc:
            raise timed_out(exc) from exc
        except httpx.TransportError as exc:
            raise (cut_off(exc) if streaming else unreachable(exc)) from exc


class _Call:
    """One `post` handed to the loop: what to send, in which context, and its outcome; `done`
    is released when the outcome is there."""

    __slots__ = ("args", "context", "done", "response", "error", "task")

    def __init__(self, args: tuple[Any, ...], context: contextvars.Context) -> None:
        self.args = args
        self.context = context  # the caller's (workers/observability.py keeps the step there)
        self.done = threading.Lock()
        self.done.acquire()
        self.response: WireResponse | None = None
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None


class LoopTransport:
    """aiohttp on an event-loop thread of its own; `post` is safe to call from any thread.

    Made per process: it refuses to be used after a fork (its thread does not exist in the
    child), so a prefork child must make its own (workers/resources.py does on reset).
    """

    def __init__(self, max_connections: int, timeout: float) -> None:
        self.max_connections = max_connections
        self.timeout = timeout
        self._pid = os.getpid()
        self._closed = False
        self._session: aiohttp.ClientSession | None = None  # made and used on the loop only
        self._loop = asyncio.new_event_loop()
        self._inbox: list[_Call] = []  # posts not yet taken by the loop
        self._inbox_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="legato-model-transport", daemon=True)
        self._thread.start()
        # Close the session before the interpreter tears the daemon thread down, so aiohttp does
        # not log "Unclosed client session" at exit. A weak reference: this must not keep it.
        atexit.register(_close_at_exit, weakref.ref(self))

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop `apost` runs on: schedule coroutines here with run_coroutine_threadsafe."""
        return self._loop

    def _check(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(f"LoopTransport made in process {self._pid} used in process "
                               f"{os.getpid()} after a fork: make a new one in each process "
                               "(legato.workers.resources.reset() does)")
        if self._closed:
            raise RuntimeError("LoopTransport is closed")

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def submit(self, url: str, *, json: dict[str, Any], headers: dict[str, str],
               timeout: float | None,
               on_chunk: OnChunk | None = None) -> concurrent.futures.Future[WireResponse]:
        """Start the call on the loop; the future's result is `post`'s (or its TransientError)."""
        self._check()
        # Serialize here, in the caller's thread: a body that is not JSON fails the caller
        # at once, as with httpx, and the loop thread does only I/O.
        data = _dumps(json)
        return asyncio.run_coroutine_threadsafe(
            self._send(url, data, headers, self._timeout(timeout), on_chunk), self._loop)

    def post(self, url: str, *, json: dict[str, Any], headers: dict[str, str],
             timeout: float | None, on_chunk: OnChunk | None = None) -> WireResponse:
        on_loop = threading.current_thread() is self._thread
        if on_loop and not bridge.active():
            raise RuntimeError("LoopTransport.post would block its own loop: await apost")
        self._check()
        seconds = self._timeout(timeout)
        if on_loop:  # a bridged body (legato.bridge): the call waits on the loop, in its context
            return bridge.wait(self._send(url, _dumps(json), headers, seconds, on_chunk),
                               context=contextvars.copy_context())
        call = _Call((url, _dumps(json), headers, seconds, on_chunk), contextvars.copy_context())
        with self._inbox_lock:
            self._inbox.append(call)
            wake = len(self._inbox) == 1  # else a wakeup is on its way already
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._take)
            except RuntimeError:  # the loop was closed meanwhile: nothing will take them
                with self._inbox_lock:
                    self._inbox.clear()
                raise RuntimeError("LoopTransport is closed") from None
        if not call.done.acquire(timeout=seconds + SAFETY_MARGIN):
            self._loop.call_soon_threadsafe(self._abandon, call)
            raise timed_out(TimeoutError(f"no answer from the loop in {seconds:g} s"))
        if call.error is not None:
            raise call.error
        assert call.response is not None
        return call.response

    def _take(self) -> None:
        """On the loop: start every post handed over since the last time."""
        with self._inbox_lock:
            calls, self._inbox = self._inbox, []
        for call in calls:
            call.task = self._loop.create_task(self._run(call), context=call.context)

    async def _run(self, call: _Call) -> None:
        try:
            call.response = await self._send(*call.args)
        except BaseException as exc:  # the caller re-raises it (cancelled: it is gone)
            call.error = exc
        finally:
            call.done.release()

    def _abandon(self, call: _Call) -> None:
        """On the loop: a caller gave up waiting (a wedged call): stop it."""
        if call.task is not None:
            call.task.cancel()

    async def apost(self, url: str, *, json: dict[str, Any], headers: dict[str, str],
                    timeout: float | None, on_chunk: OnChunk | None = None) -> WireResponse:
        """`post` for coroutines already running on this transport's loop."""
        self._check()
        return await self._send(url, _dumps(json), headers, self._timeout(timeout), on_chunk)

    async def _send(self, url: str, data: bytes, headers: dict[str, str],
                    timeout: float, on_chunk: OnChunk | None = None) -> WireResponse:
        if self._session is None:  # only ever touched on the loop thread: no lock needed
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0))
        if not any(k.lower() == "content-type" for k in headers):
            headers = {**headers, "Content-Type": "application/json"}
        streaming = False
        try:  # `total` covers the whole call, the wait for a free connection included
            async with self._session.post(url, data=data, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                if on_chunk is not None and r.status == 200:
                    streaming, body = True, b""
                    async for piece in r.content.iter_any():
                        on_chunk(piece)
                else:
                    body = await r.read()
                # httpx's line, so worker logs read the same with either transport. It carries the
                # step's run id and path: run_coroutine_threadsafe runs the call in a copy of the
                # caller's contextvars (workers/observability.py keeps the step there).
                if log.isEnabledFor(logging.INFO):
                    v = r.version
                    protocol = f"HTTP/{v.major}.{v.minor}" if v else "HTTP"
                    log.info('HTTP Request: POST %s "%s %d %s"', url, protocol, r.status, r.reason)
                # Repeated headers are joined as httpx joins them.
                merged: dict[str, str] = {}
                for name, value in r.headers.items():
                    key = name.lower()
                    merged[key] = f"{merged[key]}, {value}" if key in merged else value
                return WireResponse(r.status, merged, body)
        except TimeoutError as exc:  # aiohttp's timeouts subclass it (some also ClientError)
            raise timed_out(exc) from exc
        except aiohttp.ClientError as exc:
            raise (cut_off(exc) if streaming else unreachable(exc)) from exc

    def close(self) -> None:
        """Close the session and stop the loop thread. Idempotent; in a forked child it only
        forgets (the parent's thread and sockets are not the child's to touch)."""
        if self._closed or os.getpid() != self._pid:
            return
        self._closed = True
        if threading.current_thread() is self._thread:
            raise RuntimeError("LoopTransport.close cannot run on its own loop")

        async def closing() -> None:
            if self._session is not None:
                await self._session.close()

        try:
            asyncio.run_coroutine_threadsafe(closing(), self._loop).result(SAFETY_MARGIN)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(SAFETY_MARGIN)
            if not self._thread.is_alive():
                self._loop.close()


def _close_at_exit(ref: weakref.ref[LoopTransport]) -> None:
    transport = ref()
    if transport is not None:
        transport.close()


def as_transport(client: Client) -> Transport:
    """`client` itself if it is a Transport; an httpx.Client wrapped in HttpxTransport."""
    # httpx.Client has a `post` too, so it must be told apart before the Protocol check.
    if isinstance(client, httpx.Client):
        return HttpxTransport(client)
    return client
