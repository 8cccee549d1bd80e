"""Completion callbacks: whom a run tells when it finishes, what it tells, and how.

    legato.submit("summarize", {...}, on_done={"task": "billing.run_done", "queue": "billing",
                                               "url": "https://hooks.example.com/legato"})

`on_done` (an `OnDone`, or the same as a dict: the CLI's `--on-done-task NAME[@QUEUE]` and
`--on-done-url URL`, `legato.submit`'s `on_done` kwarg) is checked at submit, before anything is
written: the task name's form, the URL's scheme and origin against LEGATO_WEBHOOK_HOSTS (the
same allow-list rules as HTTP tools, tools/http.py). A refusal is an InputError naming the field.

Delivered at least once, however the run finishes (succeeded, failed, cancelled, stalled):
1. The script that finishes a run (store.py, `_FINISH`) puts a run that has callbacks into the
   callbacks set, held for a while, in the same step. Whoever finished it sends `legato.deliver`
   at once (`finish` -> `announce`); should that process die first, a sweeper claims the run
   when the hold is up and sends it (workers/lifeline.py). No window loses it.
2. `legato.deliver` (tasks/deliver.py) tries each target not yet done (`attempt`), records each
   try on the run (`RunRecord.deliveries`), keeps the run held while it works and waits, and
   tries again later what failed transiently (Celery retry, waits from `Backoff`). When every
   target is delivered or given up, the run leaves the set.
A target may be told twice (a worker dies after a POST, before recording it): the delivery id,
the same on every try of one finish, is what a receiver dedupes on.

What is told (`outcome`): run id, pipeline, status, output or error, timing, usage, schedule and
delivery id. A task gets it as its one argument. A webhook gets it as the JSON body of a POST:

    X-Legato-Delivery:  <delivery id>            (and Idempotency-Key: the same)
    X-Legato-Timestamp: <unix seconds of this try>
    X-Legato-Signature: sha256=<hex HMAC-SHA256 of b"<timestamp>." + body>

keyed by LEGATO_WEBHOOK_SECRET, the delivering worker's own: never in a message, the run record
or Redis. `verify_signature` is the receiver's side (docs/operations.md has the recipe).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import ValidationError

from legato.envelope import Delivery, DeliveryTarget, OnDone, RunRecord, TerminalStatus
from legato.errors import InputError, PermanentError, TransientError
from legato.lua import Part
from legato.queues import CONTROL
from legato.settings import Settings
from legato.store import Finished, RunStore
from legato.tools import http

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("legato.callbacks")

DELIVER_TASK = "legato.deliver"
HOSTS_SETTING = "LEGATO_WEBHOOK_HOSTS"
CELERY_DEFAULT_QUEUE = "celery"  # where a callback task goes when no queue is named
SIGNATURE_TOLERANCE = 300  # seconds a receiver accepts a timestamp off by (verify_signature)


# -- at submit ---------------------------------------------------------------------------------


def check_on_done(value: OnDone | Mapping[str, Any] | None, *,
                  hosts: tuple[str, ...]) -> OnDone | None:
    """`value` as an OnDone, its URL's origin allowed by `hosts`; else InputError, one line."""
    if value is None:
        return None
    if not isinstance(value, OnDone | Mapping):
        raise InputError("on_done: expected an object with `task` (and `queue`) and/or `url`")
    try:
        on_done = value if isinstance(value, OnDone) else OnDone.model_validate(dict(value))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in ("on_done", *first["loc"]))
        reason = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise InputError(f"{where}: {reason.removeprefix('Value error, ')}") from None
    if on_done.url is not None:
        try:
            http.check_origin(on_done.url, http.parse_origins(hosts, setting=HOSTS_SETTING),
                              setting=HOSTS_SETTING)
        except (PermanentError, ValueError) as exc:
            raise InputError(f"on_done.url: {exc}") from None
    return on_done


# -- when a run finishes -----------------------------------------------------------------------


def announce(app: Celery, run_id: str) -> None:
    """Send `legato.deliver` for the run now. A failure only delays it: the run is in the
    callbacks set, and a sweeper sends it when the hold is up."""
    try:
        app.send_task(DELIVER_TASK, kwargs={"run_id": run_id}, queue=CONTROL)
    except Exception:  # the broker is down: the sweeper will
        log.warning("could not send legato.deliver for run %s yet; a sweeper will", run_id,
                    exc_info=True)


def finish(store: RunStore, app: Celery, run_id: str, status: TerminalStatus, *,
           output: Any = None, error: str | None = None,
           first: list[Part] | None = None) -> bool:
    """`store.finish_run`, then announce the run's callbacks if it has any. False if the run had
    finished already. `first`: parts written in the same round trip (the last step's end)."""
    done = store.end_run(run_id, status, output=output, error=error, first=first)
    if done is Finished.WITH_CALLBACKS:
        announce(app, run_id)
    return bool(done)


# -- what is told ------------------------------------------------------------------------------


def delivery_id(run: RunRecord, target: DeliveryTarget) -> str:
    """The same on every try of one finish of the run (a resumed run finishes anew)."""
    return f"{run.id}.{run.resumes}.{target}"


def outcome(run: RunRecord, target: DeliveryTarget) -> dict[str, Any]:
    """How the run ended, as JSON data."""
    began = run.started_at or run.created_at
    return {
        "run_id": run.id, "pipeline": run.pipeline, "status": run.status,
        "output": run.output if run.status == "succeeded" else None, "error": run.error,
        "created_at": run.created_at, "started_at": run.started_at,
        "finished_at": run.finished_at,
        "seconds": round(run.finished_at - began, 6) if run.finished_at else None,
        "usage": run.usage.model_dump(), "schedule": run.schedule,
        "idempotency_key": run.idempotency_key, "delivery_id": delivery_id(run, target),
    }


def body(run: RunRecord) -> bytes:
    """A webhook's body: the outcome as compact JSON, the exact bytes that are signed."""
    return json.dumps(outcome(run, "webhook"), separators=(",", ":"), ensure_ascii=False,
                      default=str).encode()


def sign(secret: bytes, timestamp: int, payload: bytes) -> str:
    """The X-Legato-Signature value: `sha256=` and the HMAC of `<timestamp>.<payload>`."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: bytes, payload: bytes, timestamp: str, signature: str, *,
                     tolerance: float = SIGNATURE_TOLERANCE, now: float | None = None) -> bool:
    """The receiver's check: the signature is the secret's, over this body and timestamp, and
    the timestamp is recent (so a recorded request cannot be replayed later)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, sent, payload), signature)


# -- delivering --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """The retry policy of a run's callbacks: `attempts` tries of each target, waiting `first`
    seconds after the first failure, doubling each time, at most `cap`."""

    attempts: int = 10
    first: float = 2.0
    cap: float = 600.0

    @classmethod
    def of(cls, settings: Settings) -> Backoff:
        return cls(max(1, settings.callback_attempts), settings.callback_retry_seconds)

    def wait(self, tries: int) -> float:
        """Seconds to wait after `tries` failed tries."""
        return float(min(self.cap, self.first * 2 ** max(0, tries - 1)))


def pending(run: RunRecord) -> list[DeliveryTarget]:
    """The run's targets not yet delivered nor given up on (for this finish)."""
    if run.on_done is None:
        return []
    done = {d.target for d in run.deliveries if d.final}
    return [t for t in run.on_done.targets if t not in done]


def tries(run: RunRecord, target: DeliveryTarget) -> int:
    return sum(1 for d in run.deliveries if d.target == target)


def attempt(run: RunRecord, target: DeliveryTarget, *, app: Celery, settings: Settings,
            client: httpx.Client, policy: Backoff) -> Delivery:
    """One try at telling `target` how the run ended; never raises."""
    assert run.on_done is not None
    status: int | None = None
    error: str | None = None
    retryable = False
    try:
        if target == "task":
            app.send_task(str(run.on_done.task), args=[outcome(run, "task")],
                          queue=run.on_done.queue or CELERY_DEFAULT_QUEUE)
        else:
            status = post(run, str(run.on_done.url), settings=settings, client=client)
    except TransientError as exc:
        error, retryable, status = str(exc), True, exc.status_code
    except PermanentError as exc:
        error, status = str(exc), exc.status_code
    except Exception as exc:  # the broker refused or is away: worth another try
        error, retryable = f"{type(exc).__name__}: {exc}", True
    ok = error is None
    last = retryable and tries(run, target) + 1 >= policy.attempts
    if last:
        error = f"{error} (gave up after {policy.attempts} tries)"
    return Delivery(target=target, delivery_id=delivery_id(run, target), at=time.time(), ok=ok,
                    status=status, error=error, final=ok or not retryable or last)


def post(run: RunRecord, url: str, *, settings: Settings, client: httpx.Client) -> int:
    """POST the signed outcome to `url` (checked again here: this worker's allow-list, public
    addresses only, redirects checked); its HTTP status. Raises Transient/PermanentError."""
    secret = settings.webhook_secret.get_secret_value().encode()
    if not secret:  # another worker may have it, or this one may after a restart
        raise TransientError("LEGATO_WEBHOOK_SECRET is not set on this worker: webhooks are "
                             "never sent unsigned")
    payload, timestamp, identity = body(run), int(time.time()), delivery_id(run, "webhook")
    headers = {"Content-Type": "application/json", "User-Agent": "legato-webhook",
               "X-Legato-Delivery": identity, "X-Legato-Timestamp": str(timestamp),
               "X-Legato-Signature": sign(secret, timestamp, payload)}
    origins = http.parse_origins(settings.webhook_hosts, setting=HOSTS_SETTING)
    reply = http.request("POST", url, timeout=settings.webhook_timeout, content=payload,
                         headers=headers, key=identity, origins=origins, setting=HOSTS_SETTING,
                         client=client)
    return int(reply["status"])
