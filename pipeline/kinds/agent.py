"""`agent`: a model that calls tools until it answers — one task per turn at
`<step>/turn[i]`, the turn's tool calls in parallel, at most `max_turns` turns (and the run's
budget). A turn's output is its transcript so far; the turn that answers closes the step.

A tool that needs approval (`@tool(approval="required")`, or `{name: x, approval: required}`
in the step's `tools`) is not called when the model asks: the turn ends with the call
`pending`, and `<step>/approval[i]` waits (parked, holding no task) for a signal to the agent
step — `{"decision": "approve"}`, `{"decision": "reject", "reason": "..."}` (the reason is the
tool's result the model sees) or `{"decision": "edit", "arguments": {...}}` (checked against
the tool's arguments). Who decided, when and what is in that step's record.

MCP servers' tools (`mcp:<server>` or `mcp:<server>/<tool>` in `tools`, pipeline/tools/mcp.py)
come from the run's pinned list and are journaled: a call made once is answered from the record
on every retry of its turn. They need approval when their entry says so (`{name: mcp:notes,
approval: required}`: every tool of the server) or the worker's mcp.yaml does for the server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError

from legato import paths, schema
from legato.context import Outcome, StepContext
from legato.envelope import FunctionCall, Message, MessageToolCall, ModelAttempt, ToolCall
from legato.errors import PermanentError, SignalRefused, StepError
from legato.fields import StepBase, Strict
from legato.kinds.base import Kind, call_templates
from legato.models import Gateway
from legato.publisher import answering
from legato.queues import LLM
from legato.tools import ToolSpec, get_tool, mcp
from legato.tools import toolbox as toolboxes
from legato.tools.runner import call_tool, idempotency_key

if TYPE_CHECKING:
    from celery.canvas import Signature

    from legato.compile import Compiler


class AgentTool(Strict):
    """A tool in an agent's list, with what it needs before each call."""

    name: str
    approval: Literal["none", "required"] = "none"


class Agent(StepBase):
    """A model that calls tools until it answers: one task per turn, the turn's tool calls in
    parallel, at most `max_turns` turns (and the run's budget)."""

    kind: Literal["agent"] = "agent"
    model: str
    prompt: str
    system: str | None = None
    tools: list[str | AgentTool] = Field(
        default_factory=list, description="registered tool names, or {name, approval}")
    max_turns: int = Field(6, ge=1, le=50)
    max_tool_calls_per_turn: int = Field(
        16, ge=1, le=256, description="calls a turn may run; the model is told of the rest")
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def tool_names(self) -> list[str]:
        return [t if isinstance(t, str) else t.name for t in self.tools]

    def needs_approval(self, name: str, spec: ToolSpec | None = None) -> bool:
        """Whether a call of `name` (as the model names it) waits for a person: its entry says
        so (an MCP tool's: `mcp:<server>` or `mcp:<server>/<tool>`), or the tool itself does."""
        entries = {name}
        if spec is not None and spec.journaled:  # an MCP tool, seen as <server>__<tool>
            server, _, tool = name.partition("__")
            entries = {f"mcp:{server}", f"mcp:{server}/{tool}"}
        listed = any(isinstance(t, AgentTool) and t.name in entries and t.approval == "required"
                     for t in self.tools)
        return listed or (spec or get_tool(name)).approval == "required"


def agent_turn(step: Agent, ctx: StepContext, turn: int,
               transcript: list[dict[str, Any]] | None) -> Outcome:
    """One agent turn: the model answers or asks for tools; the turn's tool calls run in
    parallel and their results (or errors, which the model gets to see) join the transcript.
    Output: `{"messages": transcript, "final": answer or None, "tool_calls": n}`."""
    messages = list(transcript or _opening(step, ctx))
    specs = tool_specs(step, ctx)
    params = {**step.params, "tools": [s.openai() for s in specs.values()]} if specs \
        else step.params
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
    pending = [c for c in allowed
               if c.name in specs and step.needs_approval(c.name, specs[c.name])]
    now = [c for c in allowed if c not in pending]
    results = run_tools(step, now, ctx, specs)
    over = json.dumps({"error": f"not run: a turn may make at most "
                                f"{step.max_tool_calls_per_turn} tool calls"})
    results += [over] * len(refused)
    if refused:
        detail["refused_tool_calls"] = len(refused)
    for call, result in zip(now + refused, results, strict=True):
        messages.append(Message(role="tool", tool_call_id=call.id, content=result).wire())
    output: dict[str, Any] = {"messages": messages, "final": None, "tool_calls": len(now)}
    if pending:  # their results come after the approval (`<step>/approval[turn]`)
        output["pending"] = [c.model_dump() for c in pending]
    return Outcome(output, reply.usage, detail)


def run_tools(step: Agent, calls: list[ToolCall], ctx: StepContext,
              specs: dict[str, ToolSpec] | None = None) -> list[str]:
    """The calls' results for the transcript, run in parallel."""
    if not calls:
        return []
    known = specs if specs is not None else tool_specs(step, ctx)
    with ThreadPoolExecutor(max_workers=min(8, len(calls))) as pool:
        return list(pool.map(lambda ic: _use_tool(known, ic[1], ctx, ic[0]), enumerate(calls)))


def tool_specs(step: Agent, ctx: StepContext) -> dict[str, ToolSpec]:
    """The agent's tools by the name models see: registered ones, and MCP servers' tools from
    the run's pinned lists (the first turn to ask pins them)."""
    found: dict[str, ToolSpec] = {}
    for name in step.tool_names:
        if not mcp.is_ref(name):
            found[name] = get_tool(name)
            continue
        box = ctx.tools or toolboxes.installed()
        if ctx.store is None or box is None:
            raise PermanentError("MCP tools run on a worker (they need its run store)")
        found.update((s.name, s) for s in mcp.specs(name, ctx.store, ctx.step.run_id, box))
    return found


APPROVAL_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["decision"], "additionalProperties": False,
    "properties": {"decision": {"enum": ["approve", "reject", "edit"]},
                   "reason": {"type": "string", "maxLength": 2000},
                   "arguments": {"type": "object"}}}


def awaiting_approval(pending: list[ToolCall]) -> str:
    """What the run shows while an approval waits: the proposed calls and their arguments."""
    shown = "; ".join(f"{c.name}({json.dumps(c.arguments, ensure_ascii=False)[:200]})"
                      for c in pending)
    return f"approval of {shown}"


def check_decision(pending: list[ToolCall], data: Any, where: str) -> dict[str, Any]:
    """An approver's signal, checked (SignalRefused naming the field): a decision, a reason
    for a rejection, arguments for an edit (of the one pending call, against its schema)."""
    try:
        schema.validate(APPROVAL_SCHEMA, data)
    except ValidationError as exc:
        raise SignalRefused(f"approval for {where} refused: {schema.describe(exc)}") from None
    if data["decision"] == "edit":
        if "arguments" not in data:
            raise SignalRefused(f"approval for {where} refused: arguments: an edit gives the "
                                f"call's new arguments")
        if len(pending) != 1:
            raise SignalRefused(f"approval for {where} refused: an edit needs one pending call "
                                f"({len(pending)} are)")
        if mcp.is_model_name(pending[0].name):  # the MCP server checks its own arguments
            return dict(data)
        try:
            schema.validate(get_tool(pending[0].name).parameters, data["arguments"])
        except (ValidationError, schema.SchemaProblem) as exc:
            why = schema.describe(exc) if isinstance(exc, ValidationError) else str(exc)
            raise SignalRefused(f"approval for {where} refused: arguments of "
                                f"{pending[0].name}: {why}") from None
    elif "arguments" in data:
        raise SignalRefused(f"approval for {where} refused: arguments: only an edit gives them")
    return dict(data)


def decide(step: Agent, pending: list[ToolCall], signal: dict[str, Any], ctx: StepContext,
           messages: list[dict[str, Any]]) -> Outcome:
    """The approval's outcome: the pending calls run (as proposed or edited) or are refused
    with the reason; their results join the transcript; the record says who, when, what."""
    decision = signal.get("data") or {}
    verdict = decision.get("decision")
    record: dict[str, Any] = {"decision": verdict, "at": signal.get("at"),
                              "proposed": [c.model_dump() for c in pending]}
    if "by" in signal:
        record["by"] = signal["by"]
    if verdict == "reject":
        reason = decision.get("reason") or "no reason given"
        record["reason"] = reason
        results = [json.dumps({"tool": c.name, "error": f"the call was rejected by a person: "
                                                        f"{reason}"}, ensure_ascii=False)
                   for c in pending]
        ran = 0
    else:
        if verdict == "edit":
            pending = [pending[0].model_copy(update={"arguments": decision["arguments"]})]
            record["arguments"] = decision["arguments"]
        results, ran = run_tools(step, pending, ctx), len(pending)
    messages = list(messages)
    for call, result in zip(pending, results, strict=True):
        messages.append(Message(role="tool", tool_call_id=call.id, content=result).wire())
    return Outcome({"messages": messages, "final": None, "tool_calls": ran},
                   detail={"approval": record})


def _opening(step: Agent, ctx: StepContext) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": ctx.render(step.system)}] if step.system else []
    return [*messages, {"role": "user", "content": ctx.render(step.prompt)}]


def _use_tool(specs: dict[str, ToolSpec], call: ToolCall, ctx: StepContext,
              position: int) -> str:
    """A tool's result for the transcript; a refusal or failure is reported to the model. The
    idempotency key is the agent step's (`ctx.node`), the same on every retry of the turn; a
    journaled (MCP) tool's is the call's place in this step, name and arguments — so a retried
    turn whose model asks for the same call again gets the recorded result, whatever id the
    model gave the call."""
    name = call.name
    try:
        spec = specs.get(name)
        if spec is None:
            raise PermanentError(f"tool {name!r} is not one of this agent's tools")
        if spec.journaled:
            key = mcp.call_key(ctx.step.run_id, ctx.step.path, position, name, call.arguments)
            value = mcp.call_journaled(spec, call.arguments, key=key, store=ctx.store,
                                       run_id=ctx.step.run_id, tools=ctx.tools)
        else:
            value = call_tool(spec, call.arguments, tools=ctx.tools,
                              key=idempotency_key(ctx.step.run_id, ctx.node, call.id or ""))
        return json.dumps({"tool": name, "result": value}, ensure_ascii=False, default=str)
    except StepError as exc:
        return json.dumps({"tool": name, "error": str(exc)}, ensure_ascii=False)


def turn_path(node: str, turn: int) -> str:
    return paths.part(node, "turn", turn)


def approval_path(node: str, turn: int) -> str:
    return paths.part(node, "approval", turn)


class AgentKind(Kind):
    name = "agent"
    spec = Agent

    def templates(self, step: Agent) -> Iterator[tuple[str, str, bool]]:
        return call_templates(step, "")

    def aliases(self, step: Agent) -> Iterator[tuple[str, str]]:
        yield "model", step.model

    def tools(self, step: Agent) -> Iterator[tuple[str, str]]:
        for i, name in enumerate(step.tool_names):
            yield f"tools[{i}]" if isinstance(step.tools[i], str) else f"tools[{i}].name", name

    def compile(self, step: Agent, path: str, queue: str | None, compiler: Compiler) -> Signature:
        return compiler.task("legato.agent", queue or LLM, path, path=turn_path(path, 0),
                             index=0)
