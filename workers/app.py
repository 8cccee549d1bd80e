"""The Celery app. `celery -A legato.workers.app worker -Q legato.llm` works as well as
`legato worker`.

Why these settings:
- JSON only, both ways: pickle is never accepted, so a message cannot execute code.
- Late acks + reject on worker lost: a message is acknowledged after its task returns, so a step
  whose worker dies is not lost; the journal makes any redelivery cheap (a completed step returns
  its stored result, a step in progress elsewhere is dropped).
- Recovery does not wait for the broker: Redis's visibility timeout would bring a dead worker's
  message back only after it expires, and a short one re-delivers long healthy steps
  (celery#5935). Instead each step holds a lease in the journal that its process renews, and the
  sweeper (workers/lifeline.py) dispatches a step again as soon as its lease runs out. The
  visibility timeout stays long (6 h), a last resort for messages lost before their step began.
- Prefetch 1: a worker reserves no more messages than it has threads to run them, so a dead
  worker strands as little as possible.
- Task events on, so Flower sees every task by its public name (`legato.llm`, ...).
- A Redis broker goes through workers/broker.py: kombu's transport, minus a redis-py client
  object built per message.

The app comes from the factory, `create_app(settings)`: producers, tests and the bench build their
own from the settings they hold. The one module-level `app` below exists because `celery -A
legato.workers.app worker|flower|control ...` (and Flower, and compose's plain-celery service) must
find an app by import path; it is the only thing built from the environment at import, and it is
`create_app(Settings.from_env())` like any other. Signal handlers are connected once, here, in
`connect_signals`: they make the process's runtime (workers/runtime.py) at worker start and in each
prefork child, start the sweeper, close the runtime at shutdown, and put run ids on log lines.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from celery import Celery
from celery.concurrency import thread
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    before_task_publish,
    celeryd_after_setup,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from legato.models import credentials
from legato.queues import CONTROL
from legato.settings import Settings, get_settings
from legato.tools import load_tool_modules
from legato.workers import broker, observability, pool, runtime, tls, unserved
from legato.workers.backend import backend_url
from legato.workers.celery_config import WIRE_AND_DELIVERY

TASK_MODULES = tuple(f"legato.tasks.{m}" for m in (
    "steps", "flow", "loops", "waiting", "finish", "submit", "children", "deliver"))


class LegatoApp(Celery):
    """A Celery app that keeps the Settings it was made from: its workers' runtime uses them."""

    settings: Settings


def create_app(settings: Settings | None = None) -> LegatoApp:
    settings = settings or get_settings()
    app = LegatoApp("legato", broker=tls.verified(settings.broker),
                    backend=backend_url(tls.verified(settings.redis_url)),
                    include=list(TASK_MODULES))
    app.settings = settings
    app.conf.update(
        **WIRE_AND_DELIVERY,
        task_default_queue=CONTROL,
        result_expires=24 * 3600,
        # Step results live in the journal and travel in messages: storing them in the result
        # backend as well is a round trip per task for nobody. Chords still count their members
        # (the Redis backend records each header result with the chord itself); `legato.submit`
        # keeps its result for the Celery clients that call it.
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        # A Redis restart or a dropped connection is ridden out, not turned into lost work.
        broker_connection_max_retries=None,
        result_backend_always_retry=True,
        result_backend_max_retries=30,
        task_publish_retry_policy={"max_retries": 30, "interval_start": 0.1,
                                   "interval_step": 0.5, "interval_max": 2.0},
        broker_transport_options={"visibility_timeout": 6 * 3600},
        broker_transport=broker.transport_for(settings.broker),  # Redis: clients made once
        worker_hijack_root_logger=False,
        # A malformed message is set aside (acked, kept, counted), never fatal (workers/poison.py);
        # task events go in batches (workers/consumer.py)
        worker_consumer="legato.workers.consumer:Consumer",
        imports=list(settings.tool_modules),
    )
    load_tool_modules(settings.tool_modules)
    # OpenTelemetry traces publishes and task runs when LEGATO_OTEL is on (once per process).
    observability.setup_tracing(settings)
    return app


def _settings_of(sender: Any) -> Settings:
    found = getattr(sender, "app", None)
    return found.settings if isinstance(found, LegatoApp) else get_settings()


# Where a Celery producer that names no queue publishes (celery-node's default, `send_task`
# without `queue=`): Celery's own default, not Legato's.
CELERY_DEFAULT_QUEUE = "celery"


def _serve_the_default_queue(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """A worker that serves legato.control also consumes Celery's default queue, so a job sent
    there is not left waiting with no record. LEGATO_SERVE_DEFAULT_QUEUE=0 turns it off (when
    other Celery apps' workers share the broker and its `celery` queue)."""
    found = getattr(instance, "app", None)
    queues = getattr(getattr(found, "amqp", None), "queues", None)
    if queues is None or not _settings_of(instance).serve_default_queue:
        return
    if CONTROL in queues.consume_from and CELERY_DEFAULT_QUEUE not in queues.consume_from:
        queues.select_add(CELERY_DEFAULT_QUEUE)


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    runtime.start(_settings_of(sender))  # the worker's main process: from its app's settings
    # Celery's threads pool, as Legato's: a segment's whole task runs on the transport's loop.
    if getattr(sender, "pool_cls", None) in (thread.TaskPool, "threads"):
        sender.pool_cls = pool.TaskPool


def _on_process_init(**_: Any) -> None:
    # A prefork child: its parent's runtime was dropped at the fork (workers/runtime.py); make
    # its own now, from the same settings, rather than in its first task. (The solo pool sends
    # this in the worker's own process: there it is the runtime `worker_init` made.)
    runtime.current()


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    found = getattr(sender, "app", None)

    def consumed() -> list[str]:  # read each pass: add_consumer / cancel_consumer show
        queues = getattr(getattr(sender, "task_consumer", None), "queues", None) or []
        return [q.name for q in queues]

    runtime.current().start_sweeper(found if isinstance(found, Celery) else app,
                                    worker=str(getattr(sender, "hostname", "") or ""),
                                    queues=consumed)


def _on_publish(sender: Any = None, body: Any = None, routing_key: str | None = None,
                **_: Any) -> None:
    # In a worker: the steps it sends on. A producer checks what it sends itself
    # (Legato.submit), with its own store.
    if runtime.started():
        unserved.note_unserved(runtime.current().queue_watch(), body, routing_key)


def _on_shutdown(**_: Any) -> None:
    runtime.reset()  # stops the sweeper and the heartbeat, closes clients and pools


_connected = False
_connect_lock = threading.Lock()


def connect_signals(settings: Settings) -> None:
    """Every signal handler Legato's workers use, connected once per process."""
    global _connected
    with _connect_lock:
        if _connected:
            return
        _connected = True
    worker_init.connect(_on_worker_init, weak=False)
    celeryd_after_setup.connect(_serve_the_default_queue, weak=False)
    worker_process_init.connect(_on_process_init, weak=False)
    worker_ready.connect(_on_worker_ready, weak=False)
    before_task_publish.connect(_on_publish, weak=False)  # steps sent to unserved queues
    worker_shutdown.connect(_on_shutdown, weak=False)
    worker_process_shutdown.connect(_on_shutdown, weak=False)
    # Logs carry run id and step path (workers/observability.py), as JSON lines with
    # LEGATO_LOG_FORMAT=json.
    log_context = functools.partial(observability.install_log_context,
                                    json_lines=settings.log_format == "json")
    after_setup_logger.connect(log_context, weak=False)
    after_setup_task_logger.connect(log_context, weak=False)
    # Credentials of this worker's models file (and key-shaped strings) never reach its logs.
    after_setup_logger.connect(credentials.install_log_redaction, weak=False)
    after_setup_task_logger.connect(credentials.install_log_redaction, weak=False)
    task_prerun.connect(observability.on_task_prerun, weak=False)
    task_postrun.connect(observability.on_task_postrun, weak=False)


# For `celery -A legato.workers.app` (see the module's docstring): the one app built at import.
app = create_app(get_settings())
connect_signals(app.settings)
