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
"""

from __future__ import annotations

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_after_setup,
    task_postrun,
    task_prerun,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from legato.models import credentials
from legato.queues import CONTROL
from legato.settings import Settings, get_settings
from legato.tools import load_tool_modules
from legato.workers import broker, lifeline, observability, resources, tls
from legato.workers.backend import backend_url
from legato.workers.celery_config import WIRE_AND_DELIVERY

TASK_MODULES = tuple(f"legato.tasks.{m}" for m in ("steps", "flow", "loops", "finish", "submit"))


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("legato", broker=tls.verified(settings.broker),
                 backend=backend_url(tls.verified(settings.redis_url)), include=list(TASK_MODULES))
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
        # A malformed message is set aside (acked, kept, counted), never fatal: workers/poison.py
        worker_consumer="legato.workers.poison:Consumer",
        imports=list(settings.tool_modules),
    )
    load_tool_modules(settings.tool_modules)
    return app


app = create_app()


# Where a Celery producer that names no queue publishes (celery-node's default, `send_task`
# without `queue=`): Celery's own default, not Legato's.
CELERY_DEFAULT_QUEUE = "celery"


@celeryd_after_setup.connect
def _serve_the_default_queue(sender: object = None, instance: object = None, **_: object) -> None:
    """A worker that serves legato.control also consumes Celery's default queue, so a job sent
    there is not left waiting with no record. LEGATO_SERVE_DEFAULT_QUEUE=0 turns it off (when
    other Celery apps' workers share the broker and its `celery` queue)."""
    queues = getattr(getattr(instance, "app", None), "amqp", None)
    queues = getattr(queues, "queues", None)
    if queues is None or not get_settings().serve_default_queue:
        return
    if CONTROL in queues.consume_from and CELERY_DEFAULT_QUEUE not in queues.consume_from:
        queues.select_add(CELERY_DEFAULT_QUEUE)


@worker_process_init.connect
def _fresh_resources(**_: object) -> None:
    # A forked child must not share its parent's sockets, nor think it has its heartbeat thread.
    resources.reset()
    lifeline.forget_keeper()


_sweeper: lifeline.Sweeper | None = None


@worker_ready.connect
def _start_sweeper(sender: object = None, **_: object) -> None:
    global _sweeper
    _sweeper = lifeline.Sweeper(resources.store(), app, get_settings())
    _sweeper.start()


@worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    if _sweeper is not None:
        _sweeper.stop()


# Logs carry run id and step path; OpenTelemetry traces when LEGATO_OTEL=1 (workers/observability).
observability.setup_tracing()
after_setup_logger.connect(observability.install_log_context, weak=False)
after_setup_task_logger.connect(observability.install_log_context, weak=False)
# Credentials of this worker's models file (and key-shaped strings) never reach its logs.
after_setup_logger.connect(credentials.install_log_redaction, weak=False)
after_setup_task_logger.connect(credentials.install_log_redaction, weak=False)
task_prerun.connect(observability.on_task_prerun, weak=False)
task_postrun.connect(observability.on_task_postrun, weak=False)
