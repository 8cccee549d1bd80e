"""Approvals on agent tools: the agent parks before a tool that needs approval, showing the
proposed call; the approver approves, rejects with a reason (which the model sees) or edits the
arguments (checked); who, when and what is in the approval's record."""

from __future__ import annotations

import time

import pytest

from legato import Legato, Pipeline, SignalRefused
from legato.kinds.agent import AgentTool
from legato.spec import Agent
from tests.integration.test_cli import legato_cli

REFUND = {"name": "refund", "arguments": {"order": 7, "amount": 120}}


def _agent(tag: str, tools: list) -> Pipeline:
    return Pipeline(name=f"approvals_{tag}", steps=[Agent(
        id="helper", model="small", max_turns=4, tools=tools,
        prompt=f"Handle the refund request {tag}: {{{{ input.text }}}}")])


def _parked(legato: Legato, run_id: str) -> None:
    deadline = time.monotonic() + 30
    while legato.status(run_id).status != "waiting":
        assert time.monotonic() < deadline, legato.status(run_id)
        time.sleep(0.05)


def _tool_messages(legato: Legato, run_id: str) -> list[str]:
    record = legato.store.get_step(run_id, "helper/turn[1]")
    return [m["content"] for m in record.output["messages"] if m["role"] == "tool"]


def test_an_approved_call_runs_after_the_agent_waited(legato, fake, stack_env):
    fake.script({"rules": [
        {"match": {"any_contains": "refunded 120 on order 7"}, "reply": "Refund issued."},
        {"match": {"contains": "request approve"}, "tool_calls": [REFUND]},
    ]})
    run_id = legato.submit(_agent("approve", ["refund"]), {"text": "order 7"})
    _parked(legato, run_id)
    run = legato.status(run_id)
    assert run.awaiting == 'approval of refund({"order": 7, "amount": 120})'
    waiting = legato.store.get_step(run_id, "helper/approval[0]")
    assert waiting.status == "waiting"
    assert [{k: c[k] for k in ("name", "arguments")} for c in waiting.detail["proposed"]] == [
        REFUND]
    assert fake.stats()["requests"] == 1  # the model asked; nothing else happened yet
    shown = " ".join(legato_cli("show", run_id, env=stack_env).stdout.split())
    assert 'waiting for approval of refund({"order": 7, "amount": 120})' in shown

    legato.signal(run_id, "helper", {"decision": "approve"}, by="ana")
    done = legato.wait(run_id, timeout=30)
    assert done.status == "succeeded" and done.output == "Refund issued.", done.error
    approval = legato.store.get_step(run_id, "helper/approval[0]").detail["approval"]
    assert approval["decision"] == "approve" and approval["by"] == "ana" and approval["at"]
    assert approval["proposed"][0]["arguments"] == REFUND["arguments"]
    assert _tool_messages(legato, run_id) == [
        '{"tool": "refund", "result": "refunded 120 on order 7"}']


def test_a_rejected_call_gives_the_model_the_reason(legato, fake):
    fake.script({"rules": [
        {"match": {"any_contains": "rejected by a person: over the limit"},
         "reply": "I cannot refund that."},
        {"match": {"contains": "request reject"}, "tool_calls": [REFUND]},
    ]})
    run_id = legato.submit(_agent("reject", ["refund"]), {"text": "order 7"})
    _parked(legato, run_id)
    legato.signal(run_id, "helper", {"decision": "reject", "reason": "over the limit"})
    done = legato.wait(run_id, timeout=30)
    assert done.status == "succeeded" and done.output == "I cannot refund that.", done.error
    assert "refunded" not in " ".join(_tool_messages(legato, run_id))
    record = legato.store.get_step(run_id, "helper/approval[0]")
    assert record.detail["approval"]["reason"] == "over the limit"
    assert record.output["tool_calls"] == 0


def test_edited_arguments_are_checked_then_run(legato, fake):
    fake.script({"rules": [
        {"match": {"any_contains": "refunded 50 on order 7"}, "reply": "Refunded 50."},
        {"match": {"contains": "request edit"}, "tool_calls": [REFUND]},
    ]})
    run_id = legato.submit(_agent("edit", ["refund"]), {"text": "order 7"})
    _parked(legato, run_id)
    with pytest.raises(SignalRefused, match="arguments of refund: .*amount"):
        legato.signal(run_id, "helper", {"decision": "edit",
                                         "arguments": {"order": 7, "amount": "lots"}})
    with pytest.raises(SignalRefused, match="decision"):
        legato.signal(run_id, "helper", {"decision": "maybe"})
    assert legato.status(run_id).status == "waiting"  # nothing changed

    legato.signal(run_id, "helper", {"decision": "edit", "arguments": {"order": 7, "amount": 50}})
    done = legato.wait(run_id, timeout=30)
    assert done.status == "succeeded" and done.output == "Refunded 50.", done.error
    approval = legato.store.get_step(run_id, "helper/approval[0]").detail["approval"]
    assert approval["arguments"] == {"order": 7, "amount": 50}
    with pytest.raises(SignalRefused, match="the run is succeeded"):
        legato.signal(run_id, "helper", {"decision": "approve"})


def test_a_tool_listed_with_approval_required_waits_and_others_run_at_once(legato, fake):
    count = {"name": "word_count", "arguments": {"text": "a b c"}}
    nap = {"name": "nap", "arguments": {"seconds": 0.01}}
    fake.script({"rules": [
        {"match": {"any_contains": "slept 0.01"}, "reply": "Done both."},
        {"match": {"contains": "request listed"}, "tool_calls": [count, nap]},
    ], "faults": [{"kind": "latency", "ms": 3000, "match": {"contains": "request idle"}}]})
    tools = ["word_count", AgentTool(name="nap", approval="required")]
    run_id = legato.submit(_agent("listed", tools), {"text": "x"})
    _parked(legato, run_id)
    turn = legato.store.get_step(run_id, "helper/turn[0]")
    assert [m["content"] for m in turn.output["messages"] if m["role"] == "tool"] == [
        '{"tool": "word_count", "result": 3}']  # ran at once; nap waits
    thinking = legato.submit(_agent("idle", ["word_count"]), {"text": "x"})  # its model is slow
    with pytest.raises(SignalRefused, match="the agent is not waiting for an approval"):
        legato.signal(thinking, "helper", {"decision": "approve"})
    legato.signal(run_id, "helper", {"decision": "approve"})
    done = legato.wait(run_id, timeout=30)
    assert done.status == "succeeded" and done.output == "Done both.", done.error
