"""Blocking step code, run on an event loop: a greenlet per task, its I/O awaited on the loop.

A worker's steps are plain blocking code (the journal's scripts, the gateway's retries, repair
and fallbacks, streaming). `run(fn)` runs such code in a greenlet on the loop's thread; where it
would block on I/O — a Redis command (`legato.store.connect`'s client), a model call
(`LoopTransport.post`), a retry's sleep — it calls `wait(awaitable)`, which switches back to the
loop with the awaitable and resumes with its result once the loop has it. So many tasks' steps
share one thread and the pool threads only hand a task over and wait, once per task, not once
per call (docs/architecture.md, "Steps on the loop").

Code in a bridged greenlet must not block otherwise: whatever it does between two waits holds
the loop (a sync Redis pipeline does, briefly), and it must not hold a lock across a wait (a
greenlet of the same thread that wanted it would stall the loop).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import greenlet

T = TypeVar("T")


class _Bridged(greenlet.greenlet):
    """A body `run` is running: its parent is the loop's greenlet."""


class _Wait:
    """What a bridged body hands the loop: an awaitable, and the context to run it in."""

    __slots__ = ("awaitable", "context")

    def __init__(self, awaitable: Awaitable[Any], context: contextvars.Context | None) -> None:
        self.awaitable = awaitable
        self.context = context


def active() -> bool:
    """Whether this code runs in a bridged body (so it may `wait`, and must not block)."""
    return isinstance(greenlet.getcurrent(), _Bridged)


def wait(awaitable: Awaitable[T], *, context: contextvars.Context | None = None) -> T:
    """In a bridged body: await `awaitable` on the loop and return its result (or raise its
    error). `context`: run it in that context (a coroutine otherwise runs in `run`'s)."""
    current = greenlet.getcurrent()
    if not isinstance(current, _Bridged):
        if asyncio.iscoroutine(awaitable):
            awaitable.close()  # never to be awaited: say so quietly, not as a warning at exit
        raise RuntimeError("bridge.wait outside a bridged body")
    result: T = current.parent.switch(_Wait(awaitable, context))
    return result


def sleep(seconds: float) -> None:
    """`time.sleep`, but on the loop in a bridged body (other bodies go on meanwhile)."""
    if active():
        wait(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in a bridged greenlet, its waits awaited here; its result, or its
    exception raised. Runs in a copy of this coroutine's context."""
    body = _Bridged(fn)
    body.gr_context = contextvars.copy_context()
    step: Any = body.switch(*args, **kwargs)
    while not body.dead:
        assert isinstance(step, _Wait)
        try:
            if step.context is None:
                value = await step.awaitable
            else:  # a task of its own, so the awaitable sees the body's contextvars
                value = await asyncio.get_running_loop().create_task(
                    _coroutine(step.awaitable), context=step.context)
        except BaseException as exc:  # noqa: BLE001 - the body gets it, as a plain call would
            step = body.throw(exc)
        else:
            step = body.switch(value)
    result: T = step
    return result


async def _coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable
