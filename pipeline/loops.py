"""Loops, as plain Python: evaluator-optimizer rounds and agent turns.

An evaluate round's output is `{"candidate", "verdict", "best"}`; `verdict` follows
VERDICT_SCHEMA, and `best` names the best round so far. `next_move` decides from it whether to
stop and with what. An agent turn's output is its transcript so far (see `agent_turn`).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from legato.errors import PermanentError, StepError
from legato.kinds import Outcome, StepContext
from legato.models import Gateway
from legato.spec import Agent, Evaluate
from legato.tools import get_tool
from legato.tools.runner import call_tool, idempotency_key

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "pass": {"type": "boolean"},
        "score": {"type": "number"},
        "feedback": {"type": "string"},
    },
    "required": ["pass", "score", "feedback"],
}


def evaluate_round(step: Evaluate, ctx: StepContext, round_no: int,
                   previous: dict[str, Any] | None) -> Outcome:
    """One round: the generator writes (seeing the last candidate and its feedback on a
    revision), the evaluator judges the candidate."""
    g, e = step.generator, step.evaluator
    last = previous or {}
    feedback = (last.get("verdict") or {}).get("feedback")
    draft = ctx.model_call(g.model, g.prompt, system=g.system, output_schema=g.output_schema,
                           params=g.params, round=round_no, previous=last.get("candidate"),
                           feedback=feedback)
    judged = ctx.model_call(e.model, e.prompt, system=e.system, output_schema=VERDICT_SCHEMA,
                            params=e.params, round=round_no, candidate=draft.output)
    verdict = judged.output
    best = last.get("best")
    if best is None or float(verdict["score"]) > best["score"]:
        best = {"round": round_no, "score": float(verdict["score"]), "candidate": draft.output}
    return Outcome({"candidate": draft.output, "verdict": verdict, "best": best},
                   draft.usage + judged.usage, {**draft.detail, **judged.detail})


def next_move(step: Evaluate, round_no: int, output: dict[str, Any],
              previous: dict[str, Any] | None) -> tuple[str, Any] | None:
    """None to go on with another round, or (why it stopped, the output to keep)."""
    verdict, best = output["verdict"], output["best"]
    score = float(verdict["score"])
    if verdict["pass"] or (step.min_score is not None and score >= step.min_score):
        return "passed", output["candidate"]
    if round_no + 1 >= step.max_rounds:
        return "max_rounds", best["candidate"]
    if previous is not None and score <= previous["best"]["score"]:
        return "no_improvement", best["candidate"]
    return None


def agent_turn(step: Agent, ctx: StepContext, turn: int,
               transcript: list[dict[str, Any]] | None) -> Outcome:
    """One agent turn: the model answers or asks for tools; the turn's tool calls run in
    parallel and their results (or errors, which the model gets to see) join the transcript.
    Output: `{"messages": transcript, "final": answer or None, "tool_calls": n}`."""
    messages = list(transcript or _opening(step, ctx))
    specs = [get_tool(name) for name in step.tools]
    params = {**step.params, "tools": [s.openai() for s in specs]} if specs else step.params
    gateway = ctx.gateway or Gateway(ctx.http)
    trace: list[dict[str, Any]] = []
    reply = gateway.complete(ctx.models, step.model, messages, params=params,
                             step_tag=ctx.step_tag, run=ctx.run, trace=trace)
    detail = {"model_calls": trace}
    if not reply.tool_calls:
        messages.append({"role": "assistant", "content": reply.text})
        return Outcome({"messages": messages, "final": reply.text, "tool_calls": 0},
                       reply.usage, detail)
    calls = [{**c, "id": c.get("id") or f"call_{turn}_{i}"} for i, c in enumerate(reply.tool_calls)]
    messages.append({"role": "assistant", "content": reply.text or None, "tool_calls": [
        {"id": c["id"], "type": "function",
         "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
        for c in calls]})
    run_id, _, path = ctx.step_tag.partition("/")
    node_path = path.rsplit("/", 1)[0]
    with ThreadPoolExecutor(max_workers=min(8, len(calls))) as pool:
        results = list(pool.map(lambda c: _use_tool(step, c, run_id, node_path, ctx), calls))
    for call, result in zip(calls, results, strict=True):
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    return Outcome({"messages": messages, "final": None, "tool_calls": len(calls)},
                   reply.usage, detail)


def _opening(step: Agent, ctx: StepContext) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": ctx.render(step.system)}] if step.system else []
    return [*messages, {"role": "user", "content": ctx.render(step.prompt)}]


def _use_tool(step: Agent, call: dict[str, Any], run_id: str, node_path: str,
              ctx: StepContext) -> str:
    """A tool's result for the transcript; a refusal or failure is reported to the model."""
    name = call["name"]
    try:
        if name not in step.tools:
            raise PermanentError(f"tool {name!r} is not one of this agent's tools")
        value = call_tool(get_tool(name), call["arguments"],
                          key=idempotency_key(run_id, node_path, call["id"]), tools=ctx.tools)
        return json.dumps({"tool": name, "result": value}, ensure_ascii=False, default=str)
    except StepError as exc:
        return json.dumps({"tool": name, "error": str(exc)}, ensure_ascii=False)
