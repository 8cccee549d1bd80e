"""Calling a tool: argument checks, a timeout, retries, and an idempotency key.

Each call runs on a thread of its own. A timed-out call cannot be killed (it is Python code); it
is abandoned — its result ignored, the step sees `TransientError` — and holds nothing but its own
thread: no pool slot, so a hung tool never starves the others. Abandoned calls are counted per
tool and process; at MAX_ABANDONED a tool's new calls are refused (TransientError) until some
end. That is also why tools with side effects take the idempotency key: the retry or redelivery
that follows carries the same key.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from pydantic import ValidationError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from legato.errors import PermanentError, StepError, TransientError
from legato.tools.registry import ToolSpec

MAX_ABANDONED = 32  # timed-out calls of one tool still running in a process, at most

_abandoned: Counter[str] = Counter()
_abandoned_lock = threading.Lock()


def abandoned(name: str) -> int:
    """Timed-out calls of tool `name` still running in this process."""
    with _abandoned_lock:
        return _abandoned[name]


def _start(spec: ToolSpec, args: dict[str, Any]) -> tuple[Future[Any], threading.Event]:
    """Run the tool on a thread of its own; `timed_out`, once set, makes the thread's end count
    as an abandoned call ending."""
    future: Future[Any] = Future()
    timed_out = threading.Event()

    def call() -> None:
        try:
            future.set_result(spec.fn(**args))
        except BaseException as exc:  # handed to the caller, who decides what it means
            future.set_exception(exc)
        finally:
            with _abandoned_lock:
                if timed_out.is_set():
                    _abandoned[spec.name] -= 1

    threading.Thread(target=call, name=f"legato-tool-{spec.name}", daemon=True).start()
    return future, timed_out


def idempotency_key(run_id: str, path: str, call_id: str) -> str:
    return hashlib.sha256(f"{run_id}/{path}/{call_id}".encode()).hexdigest()[:32]


def _once(spec: ToolSpec, args: dict[str, Any]) -> Any:
    hung = abandoned(spec.name)
    if hung >= MAX_ABANDONED:
        raise TransientError(f"tool {spec.name!r} has {hung} timed-out calls still running "
                             f"here; no more are started until some end")
    future, timed_out = _start(spec, args)
    try:
        return future.result(timeout=spec.timeout)
    except FutureTimeout:
        with _abandoned_lock:
            if not future.done():  # it may have ended just now
                timed_out.set()
                _abandoned[spec.name] += 1
        raise TransientError(f"tool {spec.name!r} timed out after {spec.timeout}s") from None
    except ValidationError as exc:
        raise PermanentError(f"tool {spec.name!r} refused its arguments: {exc}") from exc
    except StepError:
        raise
    except Exception as exc:
        raise PermanentError(f"tool {spec.name!r} raised {type(exc).__name__}: {exc}") from exc


def call_tool(spec: ToolSpec, args: dict[str, Any], *, key: str) -> Any:
    """Run a tool under its timeout, retrying transient failures `spec.retries` times."""
    if spec.wants_idempotency_key:
        args = {**args, "idempotency_key": key}
    retrying = Retrying(retry=retry_if_exception_type(TransientError),
                        stop=stop_after_attempt(spec.retries + 1),
                        wait=wait_exponential(multiplier=0.2, max=5), reraise=True)
    return retrying(_once, spec, args)
