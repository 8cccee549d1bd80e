"""Blocking code on an event loop (legato.bridge): bodies that share one loop thread, their Redis
commands, model calls and sleeps awaited there — each proven by a body that could only finish if
another ran meanwhile on the same thread (a blocking call would wedge it)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis

from legato import bridge
from legato.local.redis_server import RedisServer
from legato.models.transport import LoopTransport
from legato.store import connect
from tests.conftest import FakeModel

T = TypeVar("T")
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
step_var: contextvars.ContextVar[str] = contextvars.ContextVar("step_var", default="none")


@pytest.fixture
def loop_transport() -> Iterator[LoopTransport]:
    transport = LoopTransport(max_connections=32, timeout=5)
    yield transport
    transport.close()


def on_loop(transport: LoopTransport, *bodies: Callable[[], T]) -> list[T]:
    """Run `bodies` as bridged bodies together on the transport's loop; their results."""
    async def together() -> list[T]:
        return list(await asyncio.gather(*(bridge.run(body) for body in bodies)))

    return asyncio.run_coroutine_threadsafe(together(), transport.loop).result(20)


def test_two_bodies_share_the_loop_thread_each_waiting_for_the_other(
        loop_transport: LoopTransport) -> None:
    ready = asyncio.Event()
    threads: set[int] = set()

    def waiter() -> str:
        threads.add(threading.get_ident())
        assert bridge.active()
        bridge.wait(asyncio.wait_for(ready.wait(), 5))  # only the other body can set it
        return "woken"

    def setter() -> str:
        threads.add(threading.get_ident())
        ready.set()
        return "set"

    assert on_loop(loop_transport, waiter, setter) == ["woken", "set"]
    assert threads == {loop_transport._thread.ident}


def test_an_awaitables_error_is_raised_at_the_wait_and_a_bodys_out_of_run(
        loop_transport: LoopTransport) -> None:
    async def broken() -> None:
        raise KeyError("from the loop")

    def catches() -> str:
        try:
            bridge.wait(broken())
        except KeyError as exc:
            return f"caught {exc}"
        return "not raised"

    def raises() -> None:
        bridge.wait(asyncio.sleep(0))
        raise ValueError("from the body")

    assert on_loop(loop_transport, catches) == ["caught 'from the loop'"]
    with pytest.raises(ValueError, match="from the body"):
        on_loop(loop_transport, raises)


def test_outside_a_body_wait_refuses_and_sleep_blocks_plainly() -> None:
    assert not bridge.active()
    with pytest.raises(RuntimeError, match="outside a bridged body"):
        bridge.wait(asyncio.sleep(0))
    started = time.monotonic()
    bridge.sleep(0.05)
    assert time.monotonic() - started >= 0.05


def test_a_bodys_sleep_lets_the_other_bodies_run(loop_transport: LoopTransport) -> None:
    order: list[str] = []

    def sleeper() -> None:
        order.append("sleep")
        bridge.sleep(0.2)
        order.append("woke")

    def quick() -> None:
        order.append("quick")

    on_loop(loop_transport, sleeper, quick)
    assert order == ["sleep", "quick", "woke"]


def test_a_body_keeps_its_own_contextvars_and_hands_them_to_a_wait_that_asks(
        loop_transport: LoopTransport) -> None:
    async def seen() -> str:
        return step_var.get()

    def body(name: str) -> Callable[[], tuple[str, str, str]]:
        def run() -> tuple[str, str, str]:
            step_var.set(name)
            bridge.wait(asyncio.sleep(0.01))  # the other body sets its own meanwhile
            return (step_var.get(), bridge.wait(seen(), context=contextvars.copy_context()),
                    bridge.wait(seen()))
        return run

    assert on_loop(loop_transport, body("a"), body("b")) == [("a", "a", "none"),
                                                             ("b", "b", "none")]


def test_redis_commands_and_scripts_in_a_body_wait_on_the_loop(
        loop_transport: LoopTransport, redis_server: RedisServer) -> None:
    client = connect(redis_server.url)
    client.delete("bridge:list")
    echo = client.register_script("return ARGV[1]")
    client.script_flush()  # the script must be loaded again, from the body

    def popper() -> Any:  # a blocking pop that would wedge the loop if it blocked the thread
        return client.blpop(["bridge:list"], timeout=5)

    def pusher() -> Any:
        client.rpush("bridge:list", "x")
        return echo(args=["again"])

    assert on_loop(loop_transport, popper, pusher) == [("bridge:list", "x"), "again"]
    assert client.ping() is True  # and the same client works plainly outside a body


def test_a_wrong_redis_password_fails_a_body_at_once(
        loop_transport: LoopTransport, redis_server: RedisServer) -> None:
    url = redis_server.url.replace("redis://", "redis://nobody:wrong@")
    client = connect(url)
    started = time.monotonic()
    with pytest.raises(redis.AuthenticationError):
        on_loop(loop_transport, client.ping)
    assert time.monotonic() - started < 2  # not retried as an outage for half a minute


def test_model_calls_in_bodies_run_together_and_log_with_the_bodys_step(
        loop_transport: LoopTransport, fake: FakeModel, fake_model: str,
        caplog: pytest.LogCaptureFixture) -> None:
    from legato.workers.observability import StepContextFilter, in_step

    fake.script({"latency_ms": 300})
    caplog.set_level(logging.INFO, logger="legato.models.transport")
    caplog.handler.addFilter(StepContextFilter())

    def call(step: str) -> Callable[[int], int]:
        def run(_: int = 0) -> int:
            with in_step("run7", step):
                return loop_transport.post(f"{fake_model}/chat/completions", json=BODY,
                                           headers={}, timeout=None).status
        return run

    started = time.monotonic()
    assert on_loop(loop_transport, *(call(f"s{i}") for i in range(10))) == [200] * 10
    assert time.monotonic() - started < 2.5  # ten 300 ms calls one after another: 3 s
    assert fake.stats()["max_in_flight"] >= 5
    lines = [r for r in caplog.records if r.getMessage().startswith("HTTP Request: POST ")]
    assert sorted(r.step for r in lines) == [f"s{i}" for i in range(10)]  # type: ignore[attr-defined]


def test_a_loop_transport_still_refuses_a_plain_post_from_its_own_loop(
        loop_transport: LoopTransport, fake_model: str) -> None:
    async def plain() -> None:  # a coroutine on the loop, not a bridged body
        loop_transport.post(f"{fake_model}/chat/completions", json=BODY, headers={},
                            timeout=None)

    with pytest.raises(RuntimeError, match="would block its own loop"):
        asyncio.run_coroutine_threadsafe(plain(), loop_transport.loop).result(5)


@pytest.mark.parametrize("on", [True, False])
def test_a_task_body_runs_bridged_with_its_celery_request_or_plainly_when_off(
        monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    from celery import current_task

    from legato.settings import get_settings
    from legato.tasks.base import _on_loop
    from legato.tasks.steps import segment
    from legato.workers import resources

    monkeypatch.setenv("LEGATO_STEPS_ON_LOOP", "1" if on else "0")
    get_settings.cache_clear()
    resources.reset()

    def body(task: Any, word: str) -> tuple[bool, str, str, Any]:
        bridge.sleep(0.01)  # a switch to the loop and back keeps all of it
        return bridge.active(), word, task.request.id, getattr(current_task, "name", None)

    segment.push_request(id="task-1")
    try:
        assert _on_loop(body, segment, "hi") == (on, "hi", "task-1", "legato.segment" if on
                                                 else None)
        assert segment.request.id == "task-1"  # this thread's request is as it was
    finally:
        segment.pop_request()
        resources.reset()
        get_settings.cache_clear()


# -- the loop's pipelined Redis connection (legato.loop_redis) --------------------------------


@pytest.fixture
def own_redis(tmp_path: Any) -> Iterator[RedisServer]:
    """A Redis server of this test's own, with a password (so each connection authenticates)."""
    with RedisServer(password="s3cret", dir=tmp_path) as server:
        yield server


def test_replies_in_a_body_are_shaped_as_the_sync_clients(
        loop_transport: LoopTransport, own_redis: RedisServer) -> None:
    from legato import loop_redis

    assert loop_redis.handles(own_redis.url)  # so these go through the pipelined connection
    client = connect(own_redis.url)
    script = client.register_script("return {KEYS[1], ARGV[1], 7}")

    def commands() -> list[Any]:
        client.delete("h", "z", "n")
        return [client.set("s", "ä"), client.get("s"), client.get("missing"), client.ping(),
                client.hset("h", mapping={"a": "1", "b": "2"}), client.hgetall("h"),
                client.hincrby("h", "a", 5), client.zadd("z", {"m": 1.5}),
                client.zrange("z", 0, -1, withscores=True), client.exists("s", "h", "nope"),
                client.script_load("return 1"), script(keys=["k"], args=["v"]),
                client.incr("n"), client.expire("n", 60), client.ttl("n") > 0]

    bridged = on_loop(loop_transport, commands)[0]
    assert bridged == commands()


def test_many_bodies_commands_each_get_their_own_reply(
        loop_transport: LoopTransport, own_redis: RedisServer) -> None:
    client = connect(own_redis.url)

    def body(i: int) -> Callable[[], list[Any]]:
        def run() -> list[Any]:
            client.set(f"k{i}", f"v{i}")
            bridge.sleep(0.001 * (i % 5))  # interleave the bodies' commands on the connection
            return [client.get(f"k{i}"), client.incrby("total", i)]
        return run

    replies = on_loop(loop_transport, *(body(i) for i in range(60)))
    assert [r[0] for r in replies] == [f"v{i}" for i in range(60)]
    assert client.get("total") == str(sum(range(60)))


def test_an_error_reply_fails_only_its_command(loop_transport: LoopTransport,
                                               own_redis: RedisServer) -> None:
    client = connect(own_redis.url)
    client.set("text", "x")

    def body() -> tuple[str, str | None]:
        try:
            client.lpush("text", "y")  # WRONGTYPE
        except redis.ResponseError as exc:
            return str(exc).split()[0], client.get("text")
        return "no error", None

    assert on_loop(loop_transport, body) == [("WRONGTYPE", "x")]


def test_a_body_rides_out_a_redis_restart(loop_transport: LoopTransport,
                                          own_redis: RedisServer) -> None:
    client = connect(own_redis.url)
    down = threading.Event()

    def body() -> list[Any]:
        first = client.set("before", "1")
        down.set()
        bridge.sleep(0.5)  # Redis is killed meanwhile, and comes back a second later
        return [first, client.set("after", "2"), client.get("after")]

    def restart() -> None:
        down.wait(5)
        own_redis.kill()
        time.sleep(1.0)
        own_redis.start()

    killer = threading.Thread(target=restart)
    killer.start()
    try:
        assert on_loop(loop_transport, body) == [[True, True, "2"]]
    finally:
        killer.join()


def test_only_plain_urls_and_non_blocking_commands_take_the_pipelined_connection() -> None:
    from legato import loop_redis

    assert loop_redis.handles("redis://127.0.0.1:7000/2")
    assert loop_redis.handles("redis://user:pw@127.0.0.1:7000")
    for other in ("rediss://127.0.0.1:7000", "unix:///run/redis.sock",
                  "redis://127.0.0.1:7000/0?socket_timeout=3"):
        assert not loop_redis.handles(other), other
    assert loop_redis.takes(("EVALSHA", "abc", 0), {})
    assert loop_redis.takes(("HGETALL", "h"), {"keys": ["h"]})
    assert loop_redis.takes(("SCRIPT LOAD", "return 1"), {})
    for blocking in (("BLPOP", "l", 5), ("XREAD", "BLOCK", 0), ("SELECT", 1),
                     ("CLIENT SETNAME", "x")):
        assert not loop_redis.takes(blocking, {}), blocking
    assert not loop_redis.takes(("DUMP", "k"), {"NEVER_DECODE": True})
