"""What a worker tells operators: logs that carry run id and step path, and OpenTelemetry traces.

Logs: a `task_prerun` hook puts the task's run id and step path in a context variable; a
`logging.Filter` on the worker's handlers copies them onto every record (`record.run_id`,
`record.step`), so any line logged while a step runs — Legato's, httpx's, Celery's "succeeded in"
— says which run and step it belongs to. `LEGATO_LOG_FORMAT=json` writes one JSON object a line
(for Loki, CloudWatch, ...); otherwise ` run=<id> step=<path>` is appended to the usual text.

Traces: with `LEGATO_OTEL=1`, `opentelemetry-instrumentation-celery` (the `otel` extra) traces
every publish and every task run, with the run id and step path as span attributes, and each
model call's HTTP attempt is a GenAI span (`gen_ai.*` attributes; legato.models.telemetry).
Exporter: `OTEL_TRACES_EXPORTER` = `otlp` (default; `OTEL_EXPORTER_OTLP_ENDPOINT`, which the
exporter reads itself) or `console`.

Both are set up from Settings (workers/app.py passes them in); nothing here reads the environment.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from legato.envelope import step_of
from legato.models import telemetry
from legato.settings import Settings

log = logging.getLogger("legato.worker")

_current: ContextVar[tuple[str, str] | None] = ContextVar("legato_step", default=None)


def on_task_prerun(task: Any = None, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    found = step_of(kwargs)
    _current.set(found)
    if task is not None and found is not None:
        _annotate_span(*found)


def on_task_postrun(**_: Any) -> None:
    _current.set(None)


@contextmanager
def in_step(run_id: str, path: str) -> Iterator[None]:
    """Log lines say this step while one of a segment's or batch's steps runs (batch members
    run on pool threads, which do not inherit the task's context)."""
    outer = _current.set((run_id, path))
    try:
        yield
    finally:
        _current.reset(outer)


class StepContextFilter(logging.Filter):
    """Adds `run_id` and `step` (or "-") to every record passing through a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = _current.get()
        record.run_id, record.step = found if found else ("-", "-")
        return True


class StepTextFormatter(logging.Formatter):
    """The handler's own format, plus ` run=<id> step=<path>` while a step runs."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        run_id = getattr(record, "run_id", "-")
        if run_id != "-":
            text += f" run={run_id} step={getattr(record, 'step', '-')}"
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        run_id = getattr(record, "run_id", "-")
        if run_id != "-":
            entry["run_id"], entry["step"] = run_id, getattr(record, "step", "-")
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def install_log_context(logger: logging.Logger | None = None, *, json_lines: bool = False,
                        **_: Any) -> None:
    """Put the step filter and formatter on a logger's handlers (Celery's setup-logger hooks,
    connected in workers/app.py with `json_lines` from LEGATO_LOG_FORMAT)."""
    for handler in (logger or logging.getLogger()).handlers:
        if any(isinstance(f, StepContextFilter) for f in handler.filters):
            continue
        handler.addFilter(StepContextFilter())
        if json_lines:
            handler.setFormatter(JsonFormatter())
        elif not isinstance(handler.formatter, StepTextFormatter):
            handler.setFormatter(StepTextFormatter(handler.formatter))


# -- OpenTelemetry ---------------------------------------------------------------------------

# Instrumenting Celery patches it for the whole process, children forked later included: a fact
# about the process, not a resource to make again (the SDK's span processor handles forks itself).
_traced = False


def setup_tracing(settings: Settings, *, force: bool = False) -> bool:
    """Instrument Celery with OpenTelemetry if `settings.otel` (LEGATO_OTEL) is on (or `force`).
    True if it did.

    A tracer provider already set by the host application is kept; otherwise one is made with
    the exporter named by `settings.otel_traces_exporter` (OTEL_TRACES_EXPORTER).
    """
    global _traced
    if _traced or not (force or settings.otel):
        return _traced
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
    except ImportError:
        log.warning("LEGATO_OTEL is on but OpenTelemetry is not installed: "
                    "pip install 'legato[otel]'")
        return False
    if not _has_provider(trace):
        provider = _make_provider(settings.otel_service_name, settings.otel_traces_exporter)
        if provider is not None:
            trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument()
    telemetry.enable()  # and model calls as GenAI spans inside the tasks' spans
    _traced = True
    return True


def _has_provider(trace: Any) -> bool:
    provider = trace.get_tracer_provider()
    return type(provider).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider")


def _make_provider(service_name: str, kind: str) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create({"service.name": service_name})
    provider = TracerProvider(resource=resource)
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif kind == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http")
            return provider
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def _annotate_span(run_id: str, step: str) -> None:
    if not _traced:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("legato.run_id", run_id)
        span.set_attribute("legato.step", step)
