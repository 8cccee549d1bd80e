"""kombu's Redis transport, with its redis-py client objects made once per channel.

Stock kombu builds a new `redis.Redis` for every publish, ack and queue operation
(`Channel.conn_or_acquire`), and redis-py 8 fills a case-insensitive dict of ~170 response
callbacks in each one: ~0.4 ms of CPU per message, much of it on the worker's consumer thread,
which then delivers fewer tasks per second to the pool. A plain client object holds no connection
of its own (each command takes one from the channel's pool, safely from any thread), so one per
channel serves every caller.
Used for `redis://` and `rediss://` brokers (workers/app.py); RabbitMQ is untouched.

Stock kombu also takes one message per BRPOP and then reserves it (kombu's unacked index: a
second round trip, on the consumer thread), so a burst of messages reaches the pool at one per
two round trips. Here the message BRPOP brings is reserved, and up to the consumer's free
prefetch more (TAKE_AT_MOST in all) are popped from the same list and reserved, in one script:
the pool fills in a few round trips, never past the prefetch, and a message is never off the
list without its unacked record (kombu's own format: kombu restores it as ever).

Anyone who can write to Redis can also push a forged envelope (not JSON, or JSON without kombu's
`properties`) straight onto a queue's list; stock kombu raises on it in the consumer's event
loop and the worker exits. Here such an item is set aside like any poison message
(workers/poison.py) and the worker goes on.
"""

from __future__ import annotations

import binascii
import json
import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as virtual
from kombu.transport.virtual.base import Empty
from kombu.utils.encoding import bytes_to_str

PATH = "legato.workers.broker:Transport"


# Reserve (in kombu's unacked index, as its QoS.append does) the message BRPOP brought, and pop
# and reserve up to ARGV[3] more from the same list, in one script: KEYS list, unacked hash,
# unacked index; ARGV now, the popped message, how many more. Returns whether the first was
# reserved, then each message taken after it and whether it was (1 or 0). One without a
# delivery tag is not: Python sets it aside.
_TAKE = """
local function reserve(raw)
  local ok, m = pcall(cjson.decode, raw)
  if not ok or type(m) ~= 'table' or type(m.properties) ~= 'table' then return 0 end
  local tag = m.properties.delivery_tag
  if type(tag) ~= 'string' then return 0 end
  local info = m.properties.delivery_info
  if type(info) ~= 'table' then info = {} end
  local ex, rk = info.exchange, info.routing_key
  if type(ex) ~= 'string' then ex = '' end
  if type(rk) ~= 'string' then rk = '' end
  redis.call('ZADD', KEYS[3], ARGV[1], tag)
  redis.call('HSET', KEYS[2], tag, '[' .. raw .. ',' .. cjson.encode(ex) .. ',' ..
             cjson.encode(rk) .. ']')
  return 1
end
local out = {reserve(ARGV[2])}
for i = 1, tonumber(ARGV[3]) do
  local raw = redis.call('RPOP', KEYS[1])
  if not raw then break end
  out[#out + 1] = raw
  out[#out + 1] = reserve(raw)
end
return out
"""
# At most this many messages are taken per BRPOP (the first and the rest), within the QoS's
# prefetch: enough to fill a pool quickly, few enough that the other queues wait little.
TAKE_AT_MOST = 32


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        # Reserved already by the take script: only the in-memory bookkeeping is left.
        if self.channel._reserved.pop(delivery_tag, False):
            virtual.QoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS
    _commands_client: Any = None
    _take_script: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._reserved: dict[str, bool] = {}
        super().__init__(*args, **kwargs)

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
            key, item = dest__item
            dest = bytes_to_str(key).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            for raw, reserved in self._take(key, item):
                self._deliver_one(dest, raw, reserved)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu does
            flush = getattr(self, "_flush_brpop_reauth", None)  # kombu >= 5.7
            if flush is not None:
                flush()

    def _take(self, key: Any, first: Any) -> list[tuple[Any, bool]]:
        """`first` (BRPOP's) reserved, and up to the QoS's free prefetch (TAKE_AT_MOST in all)
        more from the list it came from, taken and reserved, in one round trip: one BRPOP
        fills many pool slots, not one. Each with whether the script reserved it."""
        if self.global_keyprefix or not self.qos.prefetch_count:
            return [(first, False)]  # kombu's way: one message per BRPOP, QoS.append reserves
        more = min(TAKE_AT_MOST, self.qos.can_consume_max_estimate() or 1) - 1
        if self._take_script is None:
            self._take_script = self._create_client().register_script(_TAKE)
        out = self._take_script(keys=[key, self.unacked_key, self.unacked_index_key],
                                args=[time.time(), first, max(more, 0)])
        return [(first, bool(out[0]))] + [(out[i], bool(out[i + 1]))
                                          for i in range(1, len(out), 2)]

    def _deliver_one(self, dest: str, item: Any, reserved: bool) -> None:
        tag: str | None = None
        try:
            payload = json.loads(bytes_to_str(item))
            tag = payload["properties"]["delivery_tag"] if reserved else None
            _check_envelope(payload)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            self._set_aside(dest, item, exc, tag)
            return
        if tag is not None:  # QoS.append has nothing left to write for it
            self._reserved[tag] = True
        try:
            self.connection._deliver(payload, dest)
        except (binascii.Error, UnicodeDecodeError) as exc:  # a body that is not base64
            if tag is not None:
                self._reserved.pop(tag, None)
            self._set_aside(dest, item, exc, tag)

    def _set_aside(self, queue: str, item: bytes | str, exc: BaseException,
                   reserved: str | None = None) -> None:
        from legato.settings import get_settings

        if reserved is not None:  # not to be restored from kombu's unacked index later
            self.qos._remove_from_indices(reserved).execute()
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
