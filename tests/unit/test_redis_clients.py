"""A worker's Redis clients parse replies and pack commands with hiredis (a dependency): the
pure-Python parser costs a worker ~5% more CPU per job (docs/benchmarks.md)."""

from __future__ import annotations

import redis
from redis._parsers import _HiredisParser
from redis.connection import HiredisRespSerializer

from legato import store


def test_the_stores_connections_parse_and_pack_with_hiredis() -> None:
    pool = store.connect("redis://127.0.0.1:1/0").connection_pool
    connection = pool.connection_class(**pool.connection_kwargs)  # made, never connected
    assert isinstance(connection._parser, _HiredisParser)
    assert isinstance(connection._command_packer, HiredisRespSerializer)


def test_kombus_clients_get_the_same_parser() -> None:
    # kombu's Redis transport (workers/broker.py) makes plain redis-py connections: their
    # default parser is hiredis's whenever hiredis is importable.
    connection = redis.Connection(host="127.0.0.1", port=1)
    assert isinstance(connection._parser, _HiredisParser)
