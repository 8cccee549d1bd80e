"""Celery's threads pool, with the tasks registered `on_loop` run on the model transport's loop.

With Celery's own threads pool a segment task takes a pool thread, which hands its body to the
event loop (tasks/base.py `_on_loop`) and waits: the consumer wakes a thread, the thread wakes the
loop, the loop wakes the thread again for Celery's epilogue (its success line, its event, the
ack). Each wake-up waits for the GIL behind the loop, and at 100 tasks in flight those waits were
a tenth of a slot's time between two tasks (docs/benchmarks.md, thirteenth session). Here the
consumer hands such a task straight to the loop: Celery's whole trace — request, body, result,
ack — runs there as one bridged greenlet (legato.bridge), and no pool thread is involved.

Every other task, and every task when the transport has no loop or LEGATO_STEPS_ON_LOOP is off,
runs on the pool's threads as with Celery's pool. A worker of Legato's app asked for `threads`
gets this pool (workers/app.py swaps it in at `worker_init`); `-P threads` stays the option to
name. `-c` bounds the tasks on the loop as it bounds the threads (so with Legato's prefetch of
one task a thread, it bounds them all).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, wait
from typing import Any

from celery.concurrency import thread
from celery.concurrency.base import apply_target

from legato import bridge
from legato.workers import resources


class TaskPool(thread.TaskPool):
    """Celery's threads pool; a task whose class says `on_loop` runs on the transport's loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_flight: set[Future[Any]] = set()
        self._lock = threading.Lock()
        self._slots = asyncio.Semaphore(self.limit)  # bound to the loop at its first use

    def on_apply(self, target: Any, args: tuple[Any, ...] | None = None,
                 kwargs: dict[str, Any] | None = None, callback: Any = None,
                 accept_callback: Any = None, **options: Any) -> Any:
        loop = self._loop_for(args[0] if args else None)
        if loop is None:
            return super().on_apply(target, args, kwargs, callback, accept_callback, **options)
        future = asyncio.run_coroutine_threadsafe(
            self._bounded(target, args, kwargs, callback, accept_callback), loop)
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._done)
        return thread.ApplyResult(future)

    def on_stop(self) -> None:
        # A warm shutdown lets the tasks on the loop finish, as the threads pool does its own
        # (the loop closes only after the pool has stopped: at worker_shutdown).
        with self._lock:
            running = set(self._in_flight)
        wait(running)
        super().on_stop()

    async def _bounded(self, *call: Any) -> Any:
        # -c tasks on the loop at most, whatever the prefetch (Legato's is one task a thread)
        async with self._slots:
            return await bridge.run(apply_target, *call)

    def _done(self, future: Future[Any]) -> None:
        with self._lock:
            self._in_flight.discard(future)

    def _loop_for(self, name: Any) -> asyncio.AbstractEventLoop | None:
        """The loop to run task `name` on, or None: on a pool thread."""
        task = self.app.tasks.get(name) if isinstance(name, str) else None
        return resources.steps_loop() if getattr(task, "on_loop", False) else None
