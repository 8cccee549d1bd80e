"""kombu's Redis transport, with its redis-py client objects made once per channel.

Stock kombu builds a new `redis.Redis` for every publish, ack and queue operation
(`Channel.conn_or_acquire`), and redis-py 8 fills a case-insensitive dict of ~170 response
callbacks in each one: ~0.4 ms of CPU per message, much of it on the worker's consumer thread,
which then delivers fewer tasks per second to the pool. A plain client object holds no connection
of its own (each command takes one from the channel's pool, safely from any thread), so one per
channel serves every caller.
Used for `redis://` and `rediss://` brokers (workers/app.py); RabbitMQ is untouched.

Anyone who can write to Redis can also push a forged envelope (not JSON, or JSON without kombu's
`properties`) straight onto a queue's list; stock kombu raises on it in the consumer's event
loop and the worker exits. Here such an item is set aside like any poison message
(workers/poison.py) and the worker goes on.
"""

from __future__ import annotations

import binascii
import json
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.base import Empty
from kombu.utils.encoding import bytes_to_str

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

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's, except that an item that is not a kombu envelope is set aside, not raised.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP",
                                                        **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            try:
                payload = json.loads(bytes_to_str(item))
                _check_envelope(payload)
            except (ValueError, TypeError, KeyError, RecursionError) as exc:
                self._set_aside(dest, item, exc)
                return True
            try:
                self.connection._deliver(payload, dest)
            except (binascii.Error, UnicodeDecodeError) as exc:  # a body that is not base64
                self._set_aside(dest, item, exc)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu does
            flush = getattr(self, "_flush_brpop_reauth", None)  # kombu >= 5.7
            if flush is not None:
                flush()

    def _set_aside(self, queue: str, item: bytes | str, exc: BaseException) -> None:
        from legato.settings import get_settings
        from legato.workers.poison import record_forged_envelope

        record_forged_envelope(self.client, get_settings().key_prefix, queue, item, exc)


def _check_envelope(payload: Any) -> None:
    """Raise unless `payload` has what kombu's Message and Celery's consumer read."""
    if not isinstance(payload, dict):
        raise TypeError(f"an envelope must be an object, not {type(payload).__name__}")
    props = payload["properties"]
    if not isinstance(props, dict) or not isinstance(props.get("delivery_tag"), str):
        raise TypeError("properties.delivery_tag must be a string")
    if not isinstance(props.get("delivery_info", {}), dict):
        raise TypeError("properties.delivery_info must be an object")
    if not isinstance(payload.get("body"), str | None):
        raise TypeError("body must be a string")
    if not isinstance(payload.get("headers"), dict | None):
        raise TypeError("headers must be an object")


class Transport(kombu_redis.Transport):
    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """This transport for a Redis broker URL; None (kombu's choice) for any other."""
    scheme = broker_url.split("://", 1)[0].lower()
    return PATH if scheme in ("redis", "rediss") else None
