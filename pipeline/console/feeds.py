"""Following runs' event streams for many watchers at once: one Redis reader per run, however
many watch it.

A watcher joins the run's `Feed` (made by the first, ended with the last), then reads what the
stream already holds after its own last id (one XRANGE), then what the feed relays. Joining
first and reading after makes the two overlap instead of leaving a gap; entries seen twice are
dropped by id. The feed's reader starts from the stream's newest entry at the time, so nothing
between that and the watcher's catch-up read is lost either.

A run whose stream ends without a `run_finished` entry (it streamed nothing) still ends its
watchers: the reader looks at the run's state whenever a read times out. A watcher that falls
too far behind (its queue full) is dropped; its browser reconnects with Last-Event-ID. While a
feed reads, it keeps the run marked watched (`events.watching`): with LEGATO_STREAM=watched, the
run's steps stream their tokens only then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from legato import events
from legato.envelope import TERMINAL
from legato.store import RunStore

BLOCK_MS = 2000  # a read's wait; then the run's state is looked at
QUEUE = 10_000  # events a watcher may fall behind by before it is dropped
CATCH_UP = 1000  # entries per catch-up read


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Behind(Exception):
    """A watcher fell too far behind its feed."""


class Feed:
    def __init__(self, feeds: Feeds, run_id: str) -> None:
        self.feeds = feeds
        self.run_id = run_id
        self.key = feeds.store.event_stream(run_id)
        self.watchers: set[asyncio.Queue[events.Event | None]] = set()
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    def _send(self, event: events.Event | None) -> None:
        for queue in list(self.watchers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self.watchers.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()  # room for the end mark: that watcher stops
                queue.put_nowait(None)

    async def _read(self) -> None:
        redis = self.feeds.redis
        try:
            newest = await redis.xrevrange(self.key, count=1)
            cursor = newest[0][0] if newest else "0-0"
            self.ready.set()
            renewal = events.Renewal()
            while True:
                if renewal.due():  # its steps stream while someone watches
                    await events.watching(redis, self.feeds.store.watched_key(self.run_id))
                reply = await redis.xread({self.key: cursor}, count=500, block=BLOCK_MS)
                entries = reply[0][1] if reply else []
                for entry_id, fields in entries:
                    cursor = entry_id
                    event = events.parse(entry_id, fields)
                    self._send(event)
                    if isinstance(event, events.RunFinished):
                        return
                if not entries:
                    status = await redis.hget(self.feeds.store.run_key(self.run_id), "status")
                    if status is None or status in TERMINAL:
                        # Ended with no run_finished entry (or expired): let watchers drain.
                        self._send(events.RunFinished(status=status or "gone"))
                        return
        finally:
            self.ready.set()
            self._send(None)
            self.feeds.forget(self)


class Feeds:
    """The console's feeds, by run id (one process, one event loop)."""

    def __init__(self, store: RunStore, redis: Any) -> None:
        self.store = store
        self.redis = redis  # redis.asyncio, decode_responses
        self.running: dict[str, Feed] = {}

    def forget(self, feed: Feed) -> None:
        if self.running.get(feed.run_id) is feed:
            del self.running[feed.run_id]

    async def follow(self, run_id: str, last_id: str | None) -> AsyncIterator[events.Event]:
        """The run's events after `last_id` (from the start if None), ending with
        `RunFinished`. Raises Behind if the watcher was dropped for falling behind."""
        feed = self.running.get(run_id)
        if feed is None or feed.task.done():
            feed = self.running[run_id] = Feed(self, run_id)
        queue: asyncio.Queue[events.Event | None] = asyncio.Queue(QUEUE)
        feed.watchers.add(queue)
        try:
            await feed.ready.wait()
            seen = _order(last_id) if last_id else (0, 0)
            start = f"({last_id}" if last_id else "-"
            while True:  # what the stream holds already
                entries = await self.redis.xrange(feed.key, min=start, max="+", count=CATCH_UP)
                for entry_id, fields in entries:
                    event = events.parse(entry_id, fields)
                    seen = _order(entry_id)
                    yield event
                    if isinstance(event, events.RunFinished):
                        return
                if len(entries) < CATCH_UP:
                    break
                start = f"({entries[-1][0]}"
            while True:  # then what the feed relays
                relayed = await queue.get()
                if relayed is None:  # dropped, or the reader failed before the run's end
                    raise Behind(run_id)
                event = relayed
                if event.id and _order(event.id) <= seen:
                    continue
                if event.id:
                    seen = _order(event.id)
                yield event
                if isinstance(event, events.RunFinished):
                    return
        finally:
            feed.watchers.discard(queue)
            if not feed.watchers and not feed.task.done():
                self.forget(feed)  # a watcher coming now starts a new feed
                feed.task.cancel()
