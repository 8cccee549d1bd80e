"""`agent`: a model that calls tools until it answers — one task per turn at
`<step>/turn[i]`, the turn's tool calls in parallel, at most `max_turns` turns (and the run's
budget). A turn's output is its transcript so far; the turn that answers closes the step."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from legato import paths
from legato.context import Outcome, StepContext
from legato.envelope import FunctionCall, Message, MessageToolCall, ModelAttempt, ToolCall
from legato.errors import PermanentError, StepError
from legato.fields import StepBase
from legato.kinds.base import Kind, call_templates
from legato.models import Gateway
from legato.publisher import answering
from legato.queues import LLM
from legato.tools import get_tool
from legato.tools.runner import call_tool, idempotency_key

if TYPE_CHECKING:
    from celery.canvas import Signature

    from legato.compile import Compiler


class Agent(StepBase):
    """A model that calls tools until it answers: one task per turn, the turn's tool calls in
    parallel, at most `max_turns` turns (and the run's budget)."""

    kind: Literal["agent"] = "agent"
    model: str
    prompt: str
    system: str | None = None
    tools: list[str] = Field(default_factory=list, description="registered tool names")
    max_turns: int = Field(6, ge=1, le=50)
    max_tool_calls_per_turn: int = Field(
        16, ge=1, le=256, description="calls a turn may run; the model is told of the rest")
    params: dict[str, Any] = Field(default_factory=dict)


def agent_turn(step: Agent, ctx: StepContext, turn: int,
               transcript: list[dict[str, Any]] | None) -> Outcome:
    """One agent turn: the model answers or asks for tools; the turn's tool calls run in
    parallel and their results (or errors, which the model gets to see) join the transcript.
    Output: `{"messages": transcript, "final": answer or None, "tool_calls": n}`."""
    messages = list(transcript or _opening(step, ctx))
    specs = [get_tool(name) for name in step.tools]
    params = {**step.params, "tools": [s.openai() for s in specs]} if specs else step.params
    gateway = ctx.gateway or Gateway(ctx.http)
    trace: list[ModelAttempt] = []
    with answering(ctx.stream):
        reply = gateway.complete(ctx.models, step.model, messages, params=params,
                                 step=ctx.step, run=ctx.run, trace=trace, stream=ctx.stream)
    detail: dict[str, Any] = {"model_calls": trace}
    if not reply.tool_calls:
        messages.append(Message(role="assistant", content=reply.text).wire())
        return Outcome({"messages": messages, "final": reply.text, "tool_calls": 0},
                       reply.usage, detail)
    calls = [c if c.id else c.model_copy(update={"id": f"call_{turn}_{i}"})
             for i, c in enumerate(reply.tool_calls)]
    messages.append(Message(role="assistant", content=reply.text or None, tool_calls=[
        MessageToolCall(id=c.id or "", function=FunctionCall(
            name=c.name, arguments=json.dumps(c.arguments))) for c in calls]).wire())
    allowed, refused = calls[:step.max_tool_calls_per_turn], calls[step.max_tool_calls_per_turn:]
    with ThreadPoolExecutor(max_workers=min(8, len(allowed))) as pool:
        results = list(pool.map(lambda c: _use_tool(step, c, ctx), allowed))
    over = json.dumps({"error": f"not run: a turn may make at most "
                                f"{step.max_tool_calls_per_turn} tool calls"})
    results += [over] * len(refused)
    if refused:
        detail["refused_tool_calls"] = len(refused)
    for call, result in zip(calls, results, strict=True):
        messages.append(Message(role="tool", tool_call_id=call.id, content=result).wire())
    return Outcome({"messages": messages, "final": None, "tool_calls": len(allowed)},
                   reply.usage, detail)


def _opening(step: Agent, ctx: StepContext) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": ctx.render(step.system)}] if step.system else []
    return [*messages, {"role": "user", "content": ctx.render(step.prompt)}]


def _use_tool(step: Agent, call: ToolCall, ctx: StepContext) -> str:
    """A tool's result for the transcript; a refusal or failure is reported to the model. The
    idempotency key is the agent step's (`ctx.node`), the same on every retry of the turn."""
    name = call.name
    try:
        if name not in step.tools:
            raise PermanentError(f"tool {name!r} is not one of this agent's tools")
        value = call_tool(get_tool(name), call.arguments, tools=ctx.tools,
                          key=idempotency_key(ctx.step.run_id, ctx.node, call.id or ""))
        return json.dumps({"tool": name, "result": value}, ensure_ascii=False, default=str)
    except StepError as exc:
        return json.dumps({"tool": name, "error": str(exc)}, ensure_ascii=False)


def turn_path(node: str, turn: int) -> str:
    return paths.part(node, "turn", turn)


class AgentKind(Kind):
    name = "agent"
    spec = Agent

    def templates(self, step: Agent) -> Iterator[tuple[str, str, bool]]:
        return call_templates(step, "")

    def aliases(self, step: Agent) -> Iterator[tuple[str, str]]:
        yield "model", step.model

    def tools(self, step: Agent) -> Iterator[tuple[str, str]]:
        for i, name in enumerate(step.tools):
            yield f"tools[{i}]", name

    def compile(self, step: Agent, path: str, queue: str | None, compiler: Compiler) -> Signature:
        return compiler.task("legato.agent", queue or LLM, path, path=turn_path(path, 0),
                             index=0)
