"""What one console process shares: its settings, the producer client (sync: its calls run on
the server's thread pool), and an asyncio Redis client for what waits (a run's result, its
event stream), made when the server starts and closed when it stops."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from fastapi import Request

from legato.client import Legato
from legato.console.feeds import Feeds
from legato.settings import Settings

# Connections for what waits on Redis (one per blocked reader: a feed or a result wait), not
# for the page's plain reads, which use the client's own pool.
ASYNC_CONNECTIONS = 256


@dataclass
class ConsoleState:
    settings: Settings
    legato: Legato
    aredis: Any = field(default=None)  # redis.asyncio.Redis, while the server runs
    feeds: Feeds | None = None  # runs' event streams, followed (feeds.py)

    def open(self) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(
            self.settings.redis_url, decode_responses=True, max_connections=ASYNC_CONNECTIONS,
            timeout=30, health_check_interval=30, socket_keepalive=True)
        self.aredis = aioredis.Redis(connection_pool=pool)
        self.feeds = Feeds(self.legato.store, self.aredis)

    async def close(self) -> None:
        if self.aredis is not None:
            await self.aredis.aclose()
            self.aredis = None


def state(request: Request) -> ConsoleState:
    """A route's dependency: the console's shared state."""
    found: ConsoleState = request.app.state.console
    return found
