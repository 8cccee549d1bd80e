"""Redis commands from bridged bodies (legato.bridge): one pipelined connection per event loop.

A body's command is written at once on its loop's one connection, and replies are matched to
commands in order (Redis answers a connection's commands in the order they came), parsed by
hiredis as they arrive. So a command costs a write, a future and a parsed reply: no pool
checkout, health check or per-command retry wrapper, which cost redis-py's asyncio client
several times as much CPU a command (docs/benchmarks.md, "Steps on the loop").

What it does not take, the caller sends through redis-py's pooled asyncio client instead
(`store._BridgedRedis`): blocking commands (BLPOP & co. would hold every command behind them),
options other than `keys`, and URLs other than plain `redis://host:port/db` with a password.

Outages are ridden out as the store's sync client rides them (the store hands over its retries
and backoff): a lost connection fails the commands in flight with ConnectionError, and each is
sent again on a new connection, after a backoff, up to `retries` times (the journal's scripts
are safe to run again). A wrong password fails at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import hiredis
import redis
from redis._parsers.base import BaseParser
from redis.backoff import AbstractBackoff
from redis.connection import parse_url

# Commands that block (they would hold every command behind them) or change the connection's
# state (they would change it for every body): sent through the pooled client instead.
_NOT_PIPELINED = frozenset({"BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN",
                       "BZPOPMAX", "BZMPOP", "XREAD", "XREADGROUP", "WAIT", "WAITAOF",
                       "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR", "SELECT", "QUIT",
                       "RESET", "AUTH", "HELLO", "CLIENT"})
_URL_PARTS = frozenset({"host", "port", "db", "username", "password"})


def handles(url: str) -> bool:
    """Whether `url` is one a `LoopRedis` can connect to (plain TCP, no other options)."""
    return url.startswith("redis://") and set(parse_url(url)) <= _URL_PARTS


def takes(args: tuple[Any, ...], options: Mapping[str, Any]) -> bool:
    """Whether a command is one a `LoopRedis` sends (not blocking, no options but `keys`)."""
    return (str(args[0]).split(" ", 1)[0].upper() not in _NOT_PIPELINED and
            all(name == "keys" for name in options))


class _Link(asyncio.Protocol):
    """One connection: commands' futures in the order sent, resolved as replies arrive."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader(encoding="utf-8", replyError=redis.ResponseError)
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.waiting:
                continue
            future = self.waiting.popleft()
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, redis.ResponseError):  # NOSCRIPT -> NoScriptError, WRONGPASS ->
                future.set_exception(BaseParser.parse_error(str(reply)))  # AuthenticationError
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = redis.ConnectionError(f"Redis connection lost: {exc or 'closed'}")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Write one packed command; the future of its reply."""
        if self.lost is not None or self.transport is None or self.transport.is_closing():
            raise self.lost or redis.ConnectionError("Redis connection closed")
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(packed)
        return future


class LoopRedis:
    """Commands of one event loop's bodies on one connection to `url` (see the module's doc).
    `callbacks`: redis-py's reply parsers by command (the sync client's, so replies are the
    same shape either way); `retries`, `backoff`: how outages are ridden out."""

    def __init__(self, url: str, callbacks: Mapping[str, Callable[..., Any]], *, retries: int,
                 backoff: Callable[[], AbstractBackoff]) -> None:
        self._where = parse_url(url)
        self._callbacks = callbacks
        self._retries = retries
        self._backoff = backoff
        self._link: _Link | None = None
        self._opening: asyncio.Future[_Link] | None = None

    async def execute(self, *args: Any) -> Any:
        name = str(args[0])  # "SCRIPT LOAD": redis-py sends a two-word name as two arguments
        packed = hiredis.pack_command((*name.split(), *args[1:]))
        backoff = self._backoff()
        failures = 0
        while True:
            try:
                link = self._link if self._link is not None and self._link.lost is None \
                    else await self._open()
                reply = await link.send(packed)
                break
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if isinstance(exc, redis.AuthenticationError) or failures >= self._retries:
                    raise
                failures += 1
                await asyncio.sleep(backoff.compute(failures))
        callback = self._callbacks.get(name)  # as redis-py looks it up
        return callback(reply) if callback is not None else reply

    async def _open(self) -> _Link:
        """The live link, made (once for all callers waiting) if there is none."""
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._connect())
        opening = self._opening
        try:
            link = await asyncio.shield(opening)
        finally:
            if opening.done() and self._opening is opening:  # not a later opening's
                self._opening = None
        self._link = link
        return link

    async def _connect(self) -> _Link:
        loop = asyncio.get_running_loop()
        try:
            _, link = await loop.create_connection(
                _Link, self._where.get("host", "localhost"), self._where.get("port", 6379))
        except OSError as exc:
            raise redis.ConnectionError(f"Error connecting to Redis: {exc}") from exc
        # RESP3, as redis-py's own connections speak it (its reply callbacks expect its shapes)
        hello: list[tuple[Any, ...]] = [("HELLO", 3)]
        if self._where.get("password"):
            hello[0] += ("AUTH", self._where.get("username") or "default",
                         self._where["password"])
        if self._where.get("db"):
            hello.append(("SELECT", self._where["db"]))
        try:
            for command in hello:
                await link.send(hiredis.pack_command(command))
        except BaseException:
            assert link.transport is not None
            link.transport.close()
            raise
        return link
