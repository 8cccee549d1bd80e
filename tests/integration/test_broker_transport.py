"""The Redis broker transport (workers/broker.py): kombu's, with one redis-py client per channel."""

from __future__ import annotations

import json

import redis
from kombu import Connection, Queue

from legato.workers.broker import PATH, Channel, transport_for


def test_redis_brokers_get_the_transport_and_other_brokers_do_not():
    assert transport_for("redis://127.0.0.1:6379/0") == PATH
    assert transport_for("rediss://h:6380/0?ssl_cert_reqs=required") == PATH
    assert transport_for("amqp://guest@localhost//") is None


def test_messages_flow_through_one_client_object_per_channel(redis_server):
    url = redis_server.url
    with Connection(url, transport=PATH) as conn:
        channel = conn.channel()
        assert isinstance(channel, Channel)
        queue = Queue("legato.test.broker", channel=channel)
        queue.declare()
        producer = conn.Producer(channel)
        for i in range(20):
            producer.publish({"n": i}, routing_key=queue.name, serializer="json")
        assert channel._create_client() is channel._create_client()  # made once, not per call
        got = []
        while (message := queue.get(no_ack=False)) is not None:
            got.append(message.payload["n"])
            message.ack()
        assert got == list(range(20))
        assert channel._size(queue.name) == 0


def test_the_worker_app_uses_it_for_its_redis_broker(legato):
    assert legato.app.conf.broker_url.startswith("redis://")
    with legato.app.connection_for_write() as conn:
        assert type(conn.transport).__module__ == "legato.workers.broker"


def _own_db(redis_server) -> tuple[str, redis.Redis]:
    """A database no worker of the session uses: kombu's unacked index there is this test's."""
    url = redis_server.url.rsplit("/", 1)[0] + "/13"
    client = redis.Redis.from_url(url)
    client.flushdb()
    return url, client


def _published(conn, name: str, n: int) -> Queue:
    queue = Queue(name, channel=conn.default_channel)
    queue.declare()
    producer = conn.Producer(conn.default_channel)
    for i in range(n):
        producer.publish({"n": i}, routing_key=name, serializer="json")
    return queue


def test_one_brpop_takes_as_many_as_the_prefetch_allows_each_reserved(redis_server):
    """A burst fills the consumer's free prefetch in one round trip (BRPOP, then one script),
    not one message per BRPOP, and every message taken is in kombu's unacked index until acked."""
    url, client = _own_db(redis_server)
    with Connection(url, transport=PATH) as conn:
        queue = _published(conn, "legato.test.take", 20)
        got: list = []
        consumer = conn.Consumer(queue, callbacks=[lambda body, message: got.append(message)])
        consumer.qos(prefetch_count=8)
        with consumer:
            conn.drain_events(timeout=2)  # one BRPOP's worth
            assert [m.payload["n"] for m in got] == list(range(8))
            assert client.llen("legato.test.take") == 12
            reserved = client.hgetall("unacked")
            assert set(reserved) == {m.delivery_tag.encode() for m in got}
            assert client.zcard("unacked_index") == 8
            for m in got:
                m.ack()
            assert client.hlen("unacked") == 0
            while len(got) < 20:
                conn.drain_events(timeout=2)
                for m in got:
                    if not m.acknowledged:
                        m.ack()
        assert [m.payload["n"] for m in got] == list(range(20))  # each once, in order
        assert client.hlen("unacked") == 0 and client.llen("legato.test.take") == 0


def test_a_taken_message_is_restored_by_kombu_as_it_was_sent(redis_server):
    """The take script writes kombu's own unacked record: kombu's restore puts the very message
    back (what happens to a dead worker's messages after the visibility timeout)."""
    url, client = _own_db(redis_server)
    with Connection(url, transport=PATH) as conn:
        queue = _published(conn, "legato.test.restore", 3)
        sent = client.lrange("legato.test.restore", 0, -1)
        got: list = []
        consumer = conn.Consumer(queue, callbacks=[lambda body, message: got.append(message)])
        consumer.qos(prefetch_count=3)
        with consumer:
            conn.drain_events(timeout=2)
            assert len(got) == 3 and client.llen("legato.test.restore") == 0
            qos = conn.default_channel.qos
            for m in got:
                qos.restore_by_tag(m.delivery_tag)

        def what(raw: bytes) -> tuple:
            m = json.loads(raw)
            return (m["body"], m["properties"]["delivery_tag"],
                    m["properties"]["delivery_info"]["routing_key"])

        restored = client.lrange("legato.test.restore", 0, -1)
        assert sorted(map(what, restored)) == sorted(map(what, sent))
        assert all(json.loads(r)["properties"]["delivery_info"]["redelivered"] for r in restored)
        assert client.hlen("unacked") == 0
