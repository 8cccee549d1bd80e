"""Per-process resources: each a one-line delegation to the process's runtime (workers/runtime.py),
which makes them, closes them at shutdown and makes them again after a fork.

Kept so the tasks' call sites (`resources.store()`, ...) stay as they are.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import httpx

from legato.admission import Admission
from legato.concurrency import ConcurrencyKeys
from legato.models import Gateway, RunScope
from legato.models.transport import Transport
from legato.publisher import Publisher
from legato.settings import Settings
from legato.spec import Pipeline
from legato.store import RunStore
from legato.tools.toolbox import Toolbox
from legato.voting import Ballot
from legato.workers import runtime
from legato.workers.lifeline import LeaseKeeper

if TYPE_CHECKING:
    from celery import Celery

    from legato.client import Legato


def http() -> httpx.Client:
    """The process's sync HTTP client (the model transport when LEGATO_MODEL_TRANSPORT=httpx)."""
    return runtime.current().http()


def transport() -> Transport:
    """The process's model transport: every model call in the process goes through it."""
    return runtime.current().transport()


def steps_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop segments' steps run on, or None (they run in the calling thread)."""
    return runtime.current().steps_loop()


def gateway() -> Gateway:
    """The process's model gateway: every model call's policies, over `transport()` and Redis."""
    return runtime.current().gateway()


def publisher() -> Publisher | None:
    """The process's writer of run events (None when LEGATO_STREAM is off)."""
    return runtime.current().publisher()


def run_scope(run_id: str, spec: Pipeline) -> RunScope:
    """What the gateway needs of a run: its budget (and when it began), its cache mode."""
    return runtime.current().run_scope(run_id, spec)


def store() -> RunStore:
    return runtime.current().store()


def ballot() -> Ballot:
    """Vote tallies for quorum votes."""
    return runtime.current().ballot()


def admission() -> Admission | None:
    """Admission by fair share, when the worker has a tenants file (LEGATO_TENANTS_FILE)."""
    return runtime.current().admission()


def concurrency() -> ConcurrencyKeys:
    """Concurrency keys' slots, over the process's Redis client."""
    return runtime.current().concurrency()


def batch_pool() -> ThreadPoolExecutor:
    """The threads a batch task runs its members on (LEGATO_BATCH_CONCURRENCY)."""
    return runtime.current().batch_pool()


def settings() -> Settings:
    """The process's settings (its worker app's)."""
    return runtime.current().settings


def keeper() -> LeaseKeeper:
    """The process's lease keeper (the heartbeat), started on first use."""
    return runtime.current().keeper()


def tools() -> Toolbox:
    """The process's tool threads, HTTP tools' client and host allow-list."""
    return runtime.current().tools


def client(app: Celery) -> Legato:
    """The producer the `legato.submit` task submits with (over this process's store)."""
    return runtime.current().client(app)


def reset() -> None:
    """Close every resource (one inherited through a fork is only dropped); the next use makes
    them again."""
    runtime.reset()
