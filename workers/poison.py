"""Poison messages: a task message that cannot be run is set aside, and the worker goes on.

Stock Celery 5.7 trusts the shape of a protocol-2 message: a body that is a string, an object,
null or a two-element list makes `Request.__init__` (celery/worker/request.py, unpacking
`args, kwargs, embed`) raise inside the consumer's callback, which nothing catches — the worker
logs `Unrecoverable error`, exits with code 0 and leaves the message unacked, so the next worker
on the queue dies on it too. A bad `eta`, `expires` or `timelimit` header does the same.

`Consumer` (the worker's consumer, `worker_consumer` in workers/app.py) checks every task message
before Celery builds a request from it: headers of the right types, a known task, a body of
`[args, kwargs, embed]`, arguments that bind to the task's signature with values of its annotated
types, and step envelopes (`step`, `steps`) that parse as `StepInput`. A message that fails — or
that Celery itself refuses (unknown task, content type not accepted, undecodable body), or that
still makes Celery raise — is *set aside*: logged once, acknowledged, recorded (truncated) in the
capped list `<prefix>:dead` and counted in the hash `<prefix>:poisoned` (by reason and `total`).
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any, get_type_hints

from celery import Celery
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.message import Message
from pydantic import TypeAdapter, ValidationError
from vine import promise

from legato.envelope import StepInput
from legato.errors import LegatoError
from legato.keys import Keys
from legato.store import RunStore, set_aside

logger = logging.getLogger("legato.poison")

DEAD_KEEP = 1000  # the newest set-aside messages kept in <prefix>:dead
_EXCERPT = 2000  # characters of a set-aside message's body kept

# Protocol-2 headers Celery reads before running anything, and the types it needs (None is what
# Celery itself sends for most of them when unset).
_STR = (str,)
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "id": _STR, "task": _STR, "lang": _OPT_STR, "root_id": _OPT_STR, "parent_id": _OPT_STR,
    "group": _OPT_STR, "argsrepr": _OPT_STR, "kwargsrepr": _OPT_STR, "origin": _OPT_STR,
    "shadow": _OPT_STR, "eta": _OPT_STR, "expires": _OPT_STR, "replaced_task_nesting": _OPT_INT,
    "retries": _OPT_INT, "group_index": _OPT_INT, "ignore_result": (bool, type(None)),
}
_EMBED_LISTS = ("callbacks", "errbacks", "chain")
_ENVELOPES: dict[str, TypeAdapter[Any]] = {
    "step": TypeAdapter(StepInput), "steps": TypeAdapter(list[StepInput]),
}


class Poison(Exception):
    """Why a message cannot be run; `reason` is its class (counted), the text says more."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def check(app: Celery, message: Message) -> None:
    """Raise Poison if `message` is not a task message this worker can run."""
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers:
        raise Poison("not a task message", "no `task` header (only Celery protocol 2 is taken)")
    for name, types in _HEADER_TYPES.items():
        if name in headers and not isinstance(headers[name], types):
            raise Poison("bad header", f"{name} is {type(headers[name]).__name__}")
    if "id" not in headers:
        raise Poison("bad header", "no `id`")
    for name in ("eta", "expires"):
        if headers.get(name) is not None:
            try:
                datetime.fromisoformat(headers[name])
            except ValueError:
                raise Poison("bad header", f"{name} is not an ISO 8601 time") from None
    limits = headers.get("timelimit")
    if limits is not None and not (isinstance(limits, list | tuple) and len(limits) == 2
                                   and all(_number_or_none(v) for v in limits)):
        raise Poison("bad header", "timelimit is not [soft, hard]")
    task = app.tasks.get(headers["task"])
    if task is None:
        raise Poison("unknown task", repr(headers["task"])[:100])
    if message.content_type != "application/json":
        return  # Celery refuses what it does not accept (on_invalid_task, below)
    try:
        body = message.decode()
    except RecursionError:
        raise Poison("undecodable body", "nested too deep") from None
    except Exception as exc:  # noqa: BLE001 - whatever the decoder raises, the body is bad
        raise Poison("undecodable body", f"{type(exc).__name__}: {exc}"[:200]) from None
    if not (isinstance(body, list) and len(body) == 3):
        raise Poison("bad body", f"expected [args, kwargs, embed], got {_shape(body)}")
    args, kwargs, embed = body
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(embed, dict):
        raise Poison("bad body", f"expected [list, object, object], got [{_shape(args)}, "
                                 f"{_shape(kwargs)}, {_shape(embed)}]")
    for name in _EMBED_LISTS:
        value = embed.get(name)
        if value is not None and not (isinstance(value, list)
                                      and all(isinstance(s, dict) for s in value)):
            raise Poison("bad body", f"embed.{name} is not a list of signatures")
    if embed.get("chord") is not None and not isinstance(embed["chord"], dict):
        raise Poison("bad body", "embed.chord is not a signature")
    _check_arguments(task, args, kwargs)


def _check_arguments(task: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
    signature, adapters = _signature_of(task)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise Poison("bad arguments", f"{task.name}: {exc}") from None
    for name, value in bound.arguments.items():
        adapter = adapters.get(name)
        if adapter is None:
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise Poison("bad arguments", f"{task.name}: {name}{'.' if where else ''}{where}: "
                                          f"{first['msg']}") from None


@lru_cache(maxsize=256)
def _signature_of(task: Any) -> tuple[inspect.Signature, dict[str, TypeAdapter[Any]]]:
    """The task's call signature (without `self` for bound tasks) and a validator per argument:
    the step envelope for `step`/`steps` of a step task, else the annotation, if it has one
    (`legato.signal`'s `step` is a step's name, a str)."""
    run = task.run
    signature = inspect.signature(run)
    try:
        hints = get_type_hints(run)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: check the shape only
        hints = {}
    adapters: dict[str, TypeAdapter[Any]] = {}
    for name in signature.parameters:
        if name in _ENVELOPES and "StepInput" in str(hints.get(name, "StepInput")):
            adapters[name] = _ENVELOPES[name]
        elif name in hints:
            try:
                adapters[name] = TypeAdapter(hints[name])
            except Exception:  # noqa: BLE001 - a type pydantic cannot check: skip it
                continue
    return signature, adapters


def _number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _shape(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return {dict: "an object", str: "a string", type(None): "null"}.get(type(value),
                                                                      type(value).__name__)


def _excerpt(message: Message) -> str:
    body = message.body
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    return text[:_EXCERPT]


class MessageRefused(LegatoError):
    """The worker refused a task message (stored as the task's result when it keeps one, so a
    client waiting on `legato.submit` gets an answer instead of waiting forever)."""


class SetAside:
    """Acknowledge a poison message, keep a truncated copy, count it, log one line."""

    def __init__(self, store: Callable[[], RunStore], app: Celery | None = None) -> None:
        self.app = app
        self.store = store

    def __call__(self, message: Message, reason: str, detail: str,
                 connection_errors: tuple[type[BaseException], ...] = ()) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        task, task_id = str(headers.get("task", "?"))[:100], str(headers.get("id", "?"))[:100]
        logger.error("poison message set aside (task %s, id %s): %s: %s", task, task_id,
                     reason, detail)
        message.ack_log_error(logger, connection_errors)
        self._answer(headers, f"message refused: {reason}: {detail}"[:500])
        record = json.dumps({"at": time.time(), "reason": reason, "detail": detail[:500],
                             "task": task, "id": task_id,
                             "queue": (message.delivery_info or {}).get("routing_key"),
                             "content_type": message.content_type, "body": _excerpt(message)})
        try:
            self.store().set_aside(record, reason, keep=DEAD_KEEP)
        except Exception:  # noqa: BLE001 - bookkeeping must never take the consumer down
            logger.warning("could not record a poison message in Redis", exc_info=True)


    def _answer(self, headers: dict[str, Any], error: str) -> None:
        name, task_id = headers.get("task"), headers.get("id")
        task = self.app.tasks.get(name) if self.app is not None and isinstance(name, str) \
            else None
        if task is None or task.ignore_result or not isinstance(task_id, str):
            return
        try:
            task.backend.mark_as_failure(task_id, MessageRefused(error), traceback=None)
        except Exception:  # noqa: BLE001 - the answer is a courtesy; the worker goes on
            logger.warning("could not store the refusal of task %s", task_id[:100])


def record_forged_envelope(client: Any, prefix: str, queue: str, item: bytes | str,
                           exc: BaseException) -> None:
    """A Redis list item that is not a kombu envelope (pushed there by hand): it was popped, so
    there is nothing to acknowledge; keep an excerpt and count it."""
    text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
    detail = f"{type(exc).__name__}: {exc}"[:300]
    logger.error("poison message set aside (queue %s): forged envelope: %s", queue, detail)
    record = json.dumps({"at": time.time(), "reason": "forged envelope", "detail": detail,
                         "queue": queue, "body": text[:_EXCERPT]})
    try:
        set_aside(client, Keys(prefix), record, "forged envelope", keep=DEAD_KEEP)
    except Exception:  # noqa: BLE001 - bookkeeping must never take the consumer down
        logger.warning("could not record a poison message in Redis", exc_info=True)


def _store() -> RunStore:
    from legato.workers import resources

    return resources.store()


class Consumer(CeleryConsumer):
    """Celery's consumer, with every task message checked before Celery builds a request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_aside = SetAside(_store, self.app)

    def create_task_handler(self, promise: Any = promise) -> Callable[[Message], None]:
        handle = super().create_task_handler(promise)
        app, errors = self.app, self.connection_errors

        def on_task_received(message: Message) -> None:
            try:
                check(app, message)
            except Poison as poison:
                return self.set_aside(message, poison.reason, poison.detail, errors)
            try:
                handle(message)
            except errors:
                raise  # the connection went: Celery reconnects and the message comes back
            except Exception as exc:  # noqa: BLE001 - whatever else: one message, not the worker
                self.set_aside(message, "refused by celery", f"{type(exc).__name__}: {exc}",
                               errors)
            return None

        return on_task_received

    # Celery's own refusals, counted and recorded the same way (instead of reject/requeue).
    def on_unknown_message(self, body: Any, message: Message) -> None:
        self.set_aside(message, "not a task message", "no `task` header", self.connection_errors)

    def on_unknown_task(self, body: Any, message: Message, exc: BaseException) -> None:
        self.set_aside(message, "unknown task", str(exc)[:200], self.connection_errors)

    def on_invalid_task(self, body: Any, message: Message, exc: BaseException) -> None:
        self.set_aside(message, "invalid task", str(exc)[:300], self.connection_errors)

    def on_decode_error(self, message: Message, exc: BaseException) -> None:
        self.set_aside(message, "undecodable body", f"{type(exc).__name__}: {exc}"[:300],
                       self.connection_errors)


PATH = "legato.workers.poison:Consumer"
