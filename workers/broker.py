"""kombu's Redis transport, with its redis-py client objects made once per channel.

Stock kombu builds a new `redis.Redis` for every publish, ack and queue operation
(`Channel.conn_or_acquire`), and redis-py 8 fills a case-insensitive dict of ~170 response
callbacks in each one: ~0.4 ms of CPU per message, much of it on the worker's consumer thread,
which then delivers fewer tasks per second to the pool. A plain client object holds no connection
of its own (each command takes one from the channel's pool, safely from any thread), so one per
channel serves every caller.
Used for `redis://` and `rediss://` brokers (workers/app.py); RabbitMQ is untouched.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

PATH = "legato.workers.broker:Transport"


class Channel(kombu_redis.Channel):
    _commands_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        # Only the plain client is shared: kombu pins a connection of its own on the
        # asynchronous one (BRPOP, pub/sub), which it makes once per channel anyway.
        if asynchronous:
            return super()._create_client(asynchronous=True)
        if self._commands_client is None:
            self._commands_client = super()._create_client()
        return self._commands_client


class Transport(kombu_redis.Transport):
    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """This transport for a Redis broker URL; None (kombu's choice) for any other."""
    scheme = broker_url.split("://", 1)[0].lower()
    return PATH if scheme in ("redis", "rediss") else None
