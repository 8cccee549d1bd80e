"""`tool`: one call of a registered Python tool, its string arguments rendered as templates."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from legato.context import Outcome, StepContext
from legato.errors import PermanentError
from legato.fields import StepBase
from legato.kinds.base import Kind
from legato.queues import TOOLS
from legato.tools import ToolNotFound, get_tool, mcp
from legato.tools import toolbox as toolboxes
from legato.tools.runner import call_tool, idempotency_key

if TYPE_CHECKING:
    from celery.canvas import Signature

    from legato.compile import Compiler


class Tool(StepBase):
    kind: Literal["tool"] = "tool"
    tool: str
    args: dict[str, Any] = Field(default_factory=dict, description="string values are templates")


def run(step: Tool, ctx: StepContext) -> Outcome:
    args = {k: ctx.render(v) if isinstance(v, str) else v for k, v in step.args.items()}
    key = idempotency_key(ctx.step.run_id, ctx.step.path, "0")
    if mcp.is_ref(step.tool):  # one tool of an MCP server, from the run's pinned list
        if mcp.parse_ref(step.tool)[1] is None:
            raise PermanentError(f"a tool step names one tool: mcp:<server>/<tool>, not "
                                 f"{step.tool!r}")
        store, box = ctx.store, ctx.tools or toolboxes.installed()
        if store is None or box is None:
            raise PermanentError("MCP tools run on a worker (they need its run store)")
        spec = mcp.specs(step.tool, store, ctx.step.run_id, box)[0]
        return Outcome(mcp.call_journaled(spec, args, key=key, store=store,
                                          run_id=ctx.step.run_id, tools=box))
    try:
        spec = get_tool(step.tool)
    except ToolNotFound as exc:
        raise PermanentError(exc.args[0]) from None
    return Outcome(call_tool(spec, args, key=key, tools=ctx.tools))


def _own_queue(name: str) -> str | None:
    if mcp.is_ref(name):  # the tools queue (or the step's own), where mcp.yaml is read
        return None
    try:
        return get_tool(name).queue
    except ToolNotFound:
        return None


class ToolKind(Kind):
    name = "tool"
    spec = Tool

    def templates(self, step: Tool) -> Iterator[tuple[str, str, bool]]:
        for name, value in step.args.items():
            if isinstance(value, str):
                yield f"args.{name}", value, False

    def tools(self, step: Tool) -> Iterator[tuple[str, str]]:
        yield "tool", step.tool

    def compile(self, step: Tool, path: str, queue: str | None, compiler: Compiler) -> Signature:
        # A tool may name its own queue (it needs that host, say): it beats an inherited one.
        return compiler.task("legato.tool", step.queue or _own_queue(step.tool) or queue or TOOLS,
                             path)
