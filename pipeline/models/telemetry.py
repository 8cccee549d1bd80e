"""OpenTelemetry spans for model calls, by the GenAI semantic conventions.

Off until `enable()` (workers/observability.py calls it when it sets up tracing, LEGATO_OTEL):
then each HTTP attempt of a model call is a CLIENT span `chat <model>` with `gen_ai.system`
(the wire: openai, anthropic), `gen_ai.operation.name`, `gen_ai.request.model`,
`gen_ai.response.finish_reasons`, `gen_ai.usage.input_tokens` / `output_tokens`, and Legato's
alias and step; a failed attempt's span has an error status and `error.type`. It sits inside
the Celery task's span, so a trace shows a step's model calls under the step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from legato.models.config import ModelConfig
from legato.models.openai_compat import Completion

_tracer: Any = None


def enable() -> None:
    """Start emitting model-call spans (to the process's tracer provider)."""
    global _tracer
    from opentelemetry import trace

    _tracer = trace.get_tracer("legato.models")


class ModelSpan:
    def __init__(self, span: Any) -> None:
        self.span = span

    def answered(self, completion: Completion) -> None:
        usage = completion.usage
        self.span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        self.span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        if completion.finish_reason:
            self.span.set_attribute("gen_ai.response.finish_reasons",
                                    [completion.finish_reason])


@contextmanager
def model_span(alias: str, cfg: ModelConfig, step_tag: str | None) -> Iterator[ModelSpan | None]:
    """A span around one HTTP attempt, or None when tracing is off."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    attributes = {"gen_ai.operation.name": "chat", "gen_ai.system": cfg.protocol,
                  "gen_ai.request.model": cfg.model, "legato.model_alias": alias}
    if step_tag:
        attributes["legato.step"] = step_tag
    with _tracer.start_as_current_span(f"chat {cfg.model}", kind=SpanKind.CLIENT,
                                       attributes=attributes) as span:
        try:
            yield ModelSpan(span)
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__name__)
            raise
