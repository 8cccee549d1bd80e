"""The Redis broker transport (workers/broker.py): kombu's, with one redis-py client per channel."""

from __future__ import annotations

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
