"""Calling a tool: argument checks, a timeout, retries, and an idempotency key.

Each call runs on a thread of its own (tools/toolbox.py). A timed-out call cannot be killed; it
is abandoned — its result ignored, the step sees `TransientError` — and holds no pool slot, so a
hung tool never starves the others; a tool with `max_abandoned` calls still hung is refused new
ones until some end. That is also why tools with side effects take the idempotency key: the
retry or redelivery that follows carries the same key.

The toolbox is the one passed in, else the one the process's runtime installed, else — plain
library use — one made for this call.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from pydantic import ValidationError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from legato.errors import PermanentError, StepError, TransientError
from legato.settings import Settings
from legato.tools import toolbox as toolboxes
from legato.tools.registry import ToolSpec
from legato.tools.toolbox import Toolbox


def idempotency_key(run_id: str, path: str, call_id: str) -> str:
    return hashlib.sha256(f"{run_id}/{path}/{call_id}".encode()).hexdigest()[:32]


def _once(spec: ToolSpec, args: dict[str, Any], box: Toolbox) -> Any:
    hung = box.abandoned(spec.name)
    if hung >= box.max_abandoned:
        raise TransientError(f"tool {spec.name!r} has {hung} timed-out calls still running "
                             f"here; no more are started until some end")
    call = box.start(spec.name, spec.fn, args)  # HTTP tools find the box on the call's thread
    try:
        return call.future.result(timeout=spec.timeout)
    except FutureTimeout:
        call.give_up()
        raise TransientError(f"tool {spec.name!r} timed out after {spec.timeout}s") from None
    except ValidationError as exc:
        raise PermanentError(f"tool {spec.name!r} refused its arguments: {exc}") from exc
    except StepError:
        raise
    except Exception as exc:
        raise PermanentError(f"tool {spec.name!r} raised {type(exc).__name__}: {exc}") from exc


def call_tool(spec: ToolSpec, args: dict[str, Any], *, key: str,
              tools: Toolbox | None = None) -> Any:
    """Run a tool under its timeout, retrying transient failures `spec.retries` times."""
    if spec.wants_idempotency_key:
        args = {**args, "idempotency_key": key}
    retrying = Retrying(retry=retry_if_exception_type(TransientError),
                        stop=stop_after_attempt(spec.retries + 1),
                        wait=wait_exponential(multiplier=0.2, max=5), reraise=True)
    box = tools or toolboxes.installed()
    if box is not None:
        return retrying(_once, spec, args, box)
    own = Toolbox(hosts=Settings.from_env().http_tool_hosts)
    try:
        return retrying(_once, spec, args, own)
    finally:
        own.close()
