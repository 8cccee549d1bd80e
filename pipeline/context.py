"""What a step's work is handed (`StepContext`) and gives back (`Outcome`): plain Python, no
Celery, and Redis only through the run store handed in (MCP tools pin and journal there). The
task base (legato.tasks.base) builds the context; kinds do the work."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from legato import templates
from legato.envelope import ModelAttempt, StepRef, Usage
from legato.errors import GateFailed, PermanentError, StepError
from legato.fields import Gate
from legato.models import Completion, Gateway, RunScope, ask
from legato.models.config import ModelConfig
from legato.models.transport import Client
from legato.publisher import StepStream, answering
from legato.tools.toolbox import Toolbox

if TYPE_CHECKING:
    from legato.store import RunStore


@dataclass
class Outcome:
    output: Any
    usage: Usage = field(default_factory=Usage)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepContext:
    input: Any
    outputs: dict[str, Any]
    models: dict[str, ModelConfig]
    http: Client  # the process's model transport (or a plain httpx.Client)
    step: StepRef  # what runs now: its run and journal path (`node[i]`, `node/round[i]`)
    node: str = ""  # the step's own path in the spec (default: the journal path)
    item: Any = None
    index: int | None = None
    gateway: Gateway | None = None  # the process's; None: a bare one (no Redis policies)
    run: RunScope | None = None
    tools: Toolbox | None = None  # the process's; None: the installed one (tools/toolbox.py)
    store: RunStore | None = None  # the process's run store: MCP's pinned tools and journal
    stream: StepStream | None = None  # the run's event stream, for this attempt (None: off)
    lease: str = ""  # the token of the journal lease this delivery holds (a wait parks with it)

    def __post_init__(self) -> None:
        self.node = self.node or self.step.path

    @property
    def step_tag(self) -> str:
        """`run/path`, for log lines and the model's X-Legato-Step header; never parsed back."""
        return self.step.tag

    def variables(self, **extra: Any) -> dict[str, Any]:
        return {"input": self.input, "outputs": self.outputs, "item": self.item,
                "index": self.index, **extra}

    def render(self, source: str, **extra: Any) -> str:
        try:
            return templates.render(source, self.variables(**extra))
        except Exception as exc:  # undefined names, sandbox violations, filter errors
            raise PermanentError(f"template failed: {type(exc).__name__}: {exc}") from exc

    def evaluate(self, expression: str, **extra: Any) -> Any:
        """An expression's value (not its text), as a gate or a rule has it."""
        try:
            return templates.evaluate(expression, self.variables(**extra))
        except Exception as exc:  # undefined names, sandbox violations, filter errors
            raise PermanentError(f"template failed: {type(exc).__name__}: {exc}") from exc

    def model_call(
        self, model: str, prompt: str, *, system: str | None = None,
        output_schema: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
        max_repairs: int = 2, **extra: Any,
    ) -> Outcome:
        """One model answer through the process's gateway (retries, fallbacks, breaker, rate
        limits, budget, cache); attempts and repairs go to the step record's `detail`."""
        params = dict(params or {})
        if self.index is not None:  # fan-out instances of one step differ by seed
            params["seed"] = int(params.get("seed", 0)) + self.index
        gateway = self.gateway or Gateway(self.http)
        trace: list[ModelAttempt] = []

        def complete(messages: list[dict[str, Any]], schema: dict[str, Any] | None,
                     call_params: dict[str, Any] | None) -> Completion:
            return gateway.complete(self.models, model, messages, schema=schema,
                                    params=call_params, step=self.step, run=self.run,
                                    trace=trace, stream=self.stream)

        try:
            with answering(self.stream):  # the answer kept is the one committed on the stream
                answer = ask(
                    self.http, self.models[model], self.render(prompt, **extra),
                    system=self.render(system, **extra) if system else None,
                    output_schema=output_schema, params=params, step_tag=self.step_tag,
                    max_repairs=max_repairs, complete=complete,
                )
        except StepError as exc:  # the trace rides on the error, for the failed step's record
            exc.detail = {"model_calls": trace,  # type: ignore[attr-defined]
                          **({"repairs": exc.attempts} if hasattr(exc, "attempts") else {})}
            raise
        detail: dict[str, Any] = {"model_calls": trace} if trace else {}
        if answer.attempts:
            detail["repairs"] = answer.attempts
        return Outcome(answer.output, answer.usage, detail)


def check_gate(gate: Gate, output: Any, ctx: StepContext) -> None:
    try:
        passed = templates.evaluate(gate.check, ctx.variables(output=output))
    except Exception as exc:
        raise PermanentError(f"gate check failed to evaluate: {exc}") from exc
    if not passed:
        raise GateFailed(f"gate stopped the chain: {gate.message}")
