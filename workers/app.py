"""The Celery app. `celery -A workers.app worker -Q legato.llm` works as well as `legato worker`.

Why these settings:
- JSON only, both ways: pickle is never accepted, so a message cannot execute code.
- Late acks + reject on worker lost: a message is acknowledged after its task returns, so a worker
  that dies mid-step leaves it to be delivered again; the step journal makes that redelivery cheap
  (a completed step returns its stored result).
- Task events on, so Flower sees every task by its public name (`legato.llm`, ...).
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from pipeline.compile import CONTROL
from pipeline.settings import Settings, get_settings
from pipeline.tools import load_tool_modules
from workers import resources
from workers.backend import backend_url

TASK_MODULES = ("tasks.steps", "tasks.flow", "tasks.submit")


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("legato", broker=settings.broker, backend=backend_url(settings.redis_url),
                 include=list(TASK_MODULES))
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_default_queue=CONTROL,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        result_expires=24 * 3600,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 3600},
        worker_hijack_root_logger=False,
        imports=list(settings.tool_modules),
    )
    load_tool_modules(settings.tool_modules)
    return app


app = create_app()


@worker_process_init.connect
def _fresh_resources(**_: object) -> None:
    # A forked child must not share its parent's sockets.
    resources.reset()
