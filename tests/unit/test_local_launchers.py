"""The embedded dev stack's Redis launcher and network helpers, against a real redis-server."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from legato.local.net import free_port, port_open, wait_for_http, wait_for_port
from legato.local.redis_server import RedisServer, find_redis_server


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _aof_bytes(directory: Path) -> bytes:
    # Redis 7 keeps a multi-part AOF in appendonlydir/; 6.x one appendonly.aof in dir.
    return b"".join(p.read_bytes() for p in directory.rglob("*.aof"))


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_wait_for_port_times_out_with_a_clear_message() -> None:
    port = free_port()
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
        wait_for_port("127.0.0.1", port, timeout=0.2)


def test_wait_for_http_times_out() -> None:
    with pytest.raises(TimeoutError, match="did not answer"):
        wait_for_http(f"http://127.0.0.1:{free_port()}/", timeout=0.3)


def test_find_redis_server_returns_an_executable() -> None:
    assert os.access(find_redis_server(), os.X_OK)


def test_set_get_restart_and_stop() -> None:
    with RedisServer() as server:
        assert server.port != 6379
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        wait_for_port("127.0.0.1", server.port, timeout=1)
        with server.client() as r:
            assert r.config_get("appendonly") == {"appendonly": "yes"}
            assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
            r.set("legato:k", "v1")
        first_pid = server.pid

        # stop() is SIGTERM: Redis writes and fsyncs the AOF before exiting, so this is exact.
        server.restart()
        assert server.pid != first_pid
        assert first_pid is not None and _gone(first_pid)
        with server.client() as r:
            assert r.get("legato:k") == b"v1"

        pid = server.pid
        server.stop()
        assert not server.is_running()
        assert pid is not None and _gone(pid)
        assert not port_open("127.0.0.1", server.port)
    assert not server.dir.exists()


def test_hard_restart_keeps_what_reached_the_aof() -> None:
    with RedisServer() as server:
        with server.client() as r:
            r.set("legato:crash", "survives")
        # Redis writes the AOF buffer before replying, so the key is in the file (page cache)
        # by now; poll rather than assume, so the test never depends on timing.
        deadline = time.monotonic() + 5
        while b"legato:crash" not in _aof_bytes(server.dir):
            assert time.monotonic() < deadline, "key never reached the AOF"
            time.sleep(0.02)
        port = server.port
        server.restart(hard=True)  # SIGKILL, then start on the same port and dir
        assert server.port == port
        with server.client() as r:
            assert r.get("legato:crash") == b"survives"


def test_password_is_required_and_in_the_url() -> None:
    with RedisServer(password="s3cret/@x") as server:
        assert server.url == f"redis://:s3cret%2F%40x@127.0.0.1:{server.port}/0"
        with server.client() as r:
            assert r.ping()
        # A raw socket: redis-py would retry the auth failure with backoff for seconds.
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as anon:
            anon.sendall(b"PING\r\n")
            assert anon.recv(100).startswith(b"-NOAUTH")


def test_refuses_the_system_redis_port() -> None:
    with pytest.raises(ValueError, match="6379"):
        RedisServer(port=6379)


def test_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        server = RedisServer(port=s.getsockname()[1], dir=tmp_path)
        with pytest.raises(RuntimeError, match="already in use"):
            server.start()
    assert tmp_path.exists()  # a caller's dir is never removed
