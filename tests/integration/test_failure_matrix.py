"""A failure is a value; a run never hangs (issue 11): every step kind x every failure class x
every failure policy, on real Redis, real workers and the fake model server.

Each cell submits an ad-hoc Pipeline whose *target* — one model call, one tool call or one
template, chosen per kind so that only it fails — meets one failure, and asserts that the run

- reaches a terminal state within WAIT_SECONDS (far less than the stall sweeper's 300 s, so the
  sweeper cannot be what ended it; its error must not say "stalled" either): `failed`, or
  `succeeded` where the policy keeps going without the failed branch (`on_failure: skip` with
  `min_success` met; an agent, which is told its tool's error and answers);
- says why, readably: the run's error starts with the failing step's path (for a fan-out, the
  fan-out's path, and names the failed member's), and names the cause ("HTTP 400", "timed out",
  "budget exceeded", "template failed", ...); the failed step's record has the same cause and
  the error type retrying depends on;
- leaves no step record `running`.

Kinds (the target in brackets; the cell id starts with the name before the colon):
- llm: [its prompt]; tool: [its call, or its args template]; chain: [the middle of three
  steps; the last must not run];
- route_model: a model classifier [the classifier; tool faults: the chosen branch];
  route_rule: a rule [the chosen branch; template: the rule itself];
- sections: parallel sections [section `b` of three; `a` and `c` are tools, so a run budget
  spends itself on `b` alone]; sections_chain / sections_route: `b` is itself a chain (a tool,
  then the target) or a route whose rule picks the target, so the failure comes out of a nested
  task inside the chord; route_to_sections: a route (by rule) whose branch is the sections
  step, so the route's task becomes a chord, then a step after the route;
  llm_aggregate: [the fan-in's own model call; no branch fails];
- vote / vote_quorum: a parallel vote without and with a quorum [voter 0 of 3; voters 1 and 2
  answer yes and no, so a quorum of 2 is never reached and cannot skip voter 0 by a race];
- orchestrate_1 / orchestrate_2: max_rounds 1 and 2 [worker 1 of 2, in the first round];
  orchestrate_2_last_round [worker 3, the second of round 1's (the last round's) two];
  orchestrate_planner [the first plan]; orchestrate_replan [round 1's plan, asked inside
  legato.synthesize]; orchestrate_1_synthesizer / orchestrate_2_synthesizer [the synthesizer];
- evaluate [the evaluator in round 1, after a round that did not pass]; evaluate_generator [the
  generator in round 0];
- agent [turn 0; a budget: turn 1, after a tool call];
- run_output: the pipeline's `output` template, rendered when the run closes (the error names no
  step: it reads "output failed: ...");
- wait [nobody signals it: its timeout, under each `on_timeout` — fail, value (its default is
  the output), jump (to a later step, over the one between)];
- pipeline [its child run's model call (HTTP 400: the child fails), under each `on_failure` —
  fail, skip, fallback; or its own input template, which fails the step under every policy and
  starts no child].

A second, smaller test puts a failing tool step *before* each kind: every kind's task must pass
the failure on untouched (fan-outs through each member and the fan-in), and nothing after it may
run or call a model.

Failure classes: model HTTP 400; model 5xx (503) on every attempt, exhausting the model's HTTP
retries and the step's task retries (LEGATO_STEP_RETRIES 3, LEGATO_STEP_RETRY_SECONDS 0.2 from
conftest); a model call timing out (a hang past the alias's `timeout`) on every attempt;
malformed model output (not JSON) on every repair; a tool raising; a tool timing out (`stall`,
tests/tools.py, not retried by the runner); the run's budget (a deadline already passed when the
target is the run's first model call, else `max_calls` spent by the calls before it); a template
failing at render time — an undefined attribute of the input (`input.absent.deeper`; the loader
checks only `outputs.<id>` names), and for llm and tool also a filter error (`'%d' | format`).

Policies, for parallel and orchestrate: `on_failure: fail`; `skip` with `min_success` not met
(fails); `skip` with `min_success` met (succeeds without the failed branch). A wait's
`on_timeout` and a `pipeline` step's `on_failure` are policies of their own (ON_TIMEOUT,
ON_CHILD_FAILURE). The wait's failure class is its own too (`no_signal`): a wait makes no model
or tool call, and its timeout is ended by the sweeper's next pass (every 5 s here), not by a
stall recovery.

Cells left out, and why:
- tool faults on llm, vote, orchestrate and evaluate: those kinds are model calls only; there is
  no tool to fail.
- model faults and budget on tool: a tool step makes no model call, and budgets meter model
  calls only.
- malformed output on agent: an agent has no output schema (its reply is text or tool calls), so
  there is nothing to parse or repair; on route, orchestrate and evaluate the target's schema is
  the kind's own (branch names, a verdict) or given to the target, so those cells exist.
- budget with `min_success` met on vote and orchestrate: the budget is the run's, so a deadline
  fails every voter or worker alike, and a `max_calls` that lets some of them through would be a
  race between members that run concurrently; no member can be made to succeed deterministically.
- agent with tool faults is not a failure: a tool's error is given to the model as the tool's
  result (by design), so those cells assert the run succeeds with the error in the transcript.
- the filter-error template only on llm and tool: every kind renders through the same
  `StepContext.render`; the undefined-name cell covers each kind's own templates. run_output has
  the undefined-name cell only.
- the kinds' own calls as targets (planner, re-plan, synthesizer, model aggregate, generator)
  only under the default policy, and with model-call faults only: no branch fails there, so
  `on_failure`/`min_success` do not apply, and they are model calls.
- route_to_sections, sections_chain and sections_route with http400, http503, budget, template
  and tool_raises only: what they add is the nesting; the other classes fail the same leaf code
  as in `sections`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from legato import Chain, Legato, Llm, Parallel, Pipeline, PipelineStep, Route, Tool, Wait
from legato.envelope import RunRecord
from legato.spec import (
    Agent,
    Aggregate,
    Budget,
    Classifier,
    Evaluate,
    ModelCall,
    ModelConfig,
    Orchestrate,
    Step,
    Vote,
)

WAIT_SECONDS = 15  # every cell ends far sooner; the sweeper (300 s) never gets a say
# A wait's timeout is ended by the sweeper's next pass (LEGATO_SWEEP_SECONDS, 5 s by default):
# still far inside WAIT_SECONDS, and it is the wait's timeout, not a stall recovery.
WAIT_TIMEOUT = 0.5
MARK = "FAULTHERE"  # the fake model's faults fire on calls whose messages contain this
LABEL: dict[str, Any] = {"type": "object", "properties": {"label": {"type": "string"}},
                         "required": ["label"]}
ANSWERED: dict[str, Any] = {"type": "object", "required": ["approved"],
                             "properties": {"approved": {"type": "boolean"}}}
ANSWER: dict[str, Any] = {"type": "object", "required": ["answer"], "properties": {
    "answer": {"type": "string", "enum": ["yes", "no"]}}}
UNDEFINED = "{{ input.absent.deeper }}"
BAD_FILTER = "{{ '%d' | format(input.text) }}"


def _on_target(fault: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**fault, "match": {"any_contains": MARK}}]


@dataclass(frozen=True)
class Fault:
    id: str
    klass: str  # model | tool | budget | template
    cause: tuple[str, ...]  # in the run's error and the failed step's
    error_type: str
    faults: list[dict[str, Any]] = field(default_factory=list)  # the fake model's script
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides
    template: str = ""


FAULTS = {f.id: f for f in [
    Fault("http400", "model", ("HTTP 400",), "PermanentError",
          _on_target({"kind": "status", "code": 400, "body": "bad request (fake)"})),
    Fault("http503", "model", ("HTTP 503",), "TransientError",
          _on_target({"kind": "status", "code": 503}),
          {"max_attempts": 2, "max_retry_wait": 0.2}),
    Fault("timeout", "model", ("timed out",), "TransientError",
          _on_target({"kind": "hang", "seconds": 5}), {"timeout": 0.3, "max_attempts": 1}),
    Fault("malformed", "model", ("not valid JSON", "repair attempts"), "OutputInvalid",
          _on_target({"kind": "malformed"})),
    Fault("tool_raises", "tool", ("tool 'explode' raised RuntimeError", "exploded"),
          "PermanentError"),
    Fault("tool_timeout", "tool", ("tool 'stall' timed out after 0.2s",), "TransientError"),
    Fault("budget", "budget", ("budget exceeded",), "BudgetExceeded"),
    Fault("template", "template", ("template failed: UndefinedError", "absent"),
          "PermanentError", template=UNDEFINED),
    Fault("filter", "template", ("template failed: TypeError", "%d format"), "PermanentError",
          template=BAD_FILTER),
    Fault("no_signal", "wait", (f"timed out: no signal within {WAIT_TIMEOUT:g}s",), "StepError"),
]}


@dataclass(frozen=True)
class Policy:
    id: str
    on_failure: str
    min_success: int | None
    succeeds: bool


POLICIES = [Policy("fail", "fail", None, False), Policy("skip_unmet", "skip", None, False),
            Policy("skip_met", "skip", None, True)]  # min_success filled in per kind
# A wait's `on_timeout` (a later step's id: `jump`) and a `pipeline` step's `on_failure`.
ON_TIMEOUT = [Policy("fail", "fail", None, False), Policy("value", "value", None, True),
              Policy("jump", "jump", None, True)]
ON_CHILD_FAILURE = [Policy("fail", "fail", None, False), Policy("skip", "skip", None, True),
                    Policy("fallback", "fallback", None, True)]


@dataclass
class Target:
    """What one cell puts in its pipeline: the fault on the target, nothing elsewhere."""

    fault: Fault
    policy: Policy | None

    @property
    def mark(self) -> str:
        """Text to put in the target's template: the fake model's trigger, or a bad template."""
        if self.fault.klass == "model":
            return MARK + " "
        return self.fault.template

    def call(self) -> dict[str, Any]:
        """Extra fields for the target model call: a schema to break, one repair."""
        if self.fault.id == "malformed":
            return {"output_schema": LABEL, "max_repairs": 1}
        return {}

    def tool(self, id: str) -> Tool:
        if self.fault.id == "tool_raises":
            return Tool(id=id, tool="explode", args={"text": "{{ input.text }}"})
        if self.fault.id == "tool_timeout":
            return Tool(id=id, tool="stall", args={"seconds": 1})
        return Tool(id=id, tool="word_count", args={"text": self.mark + "{{ input.text }}"})

    def fan_out(self, needed_when_met: int, total: int) -> dict[str, Any]:
        if self.policy is None:  # a cell whose target is not a branch: the default policy
            return {}
        min_success = {"fail": None, "skip_unmet": total, "skip_met": needed_when_met}
        return {"on_failure": self.policy.on_failure, "min_success": min_success[self.policy.id]}


@dataclass
class Case:
    steps: list[Step]
    path: str  # the run's error starts with "<path>: "
    failed: str  # the step record that failed with the cause
    calls_before: int = 0  # model calls made before the target's (for a budget)
    rules: list[dict[str, Any]] = field(default_factory=list)
    succeeds: bool = False
    fails: bool = False  # whatever the policy: the step's own failure, not one the policy covers
    cause: tuple[str, ...] = ()  # instead of the fault's own words, where the kind has its own
    output: str | None = None  # the pipeline's output template
    check: Callable[[Legato, RunRecord, dict[str, Any]], None] | None = None


def _llm(t: Target) -> Case:
    return Case([Llm(id="ask", model="m", prompt=t.mark + "Answer {{ input.text }}", **t.call())],
                "ask", "ask")


def _tool(t: Target) -> Case:
    return Case([t.tool("use")], "use", "use")


def _chain(t: Target) -> Case:
    middle: Step = (t.tool("second") if t.fault.klass == "tool" else Llm(
        id="second", model="m", prompt=t.mark + "Go on from {{ outputs.first }}", **t.call()))

    def check(legato: Legato, run: RunRecord, steps: dict[str, Any]) -> None:
        assert steps["flow/first"].status == "succeeded" and "flow/third" not in steps

    return Case([Chain(id="flow", steps=[
        Llm(id="first", model="m", prompt="Begin {{ input.text }}"),
        middle,
        Llm(id="third", model="m", prompt="End {{ outputs.second }}"),
    ])], "flow/second", "flow/second", calls_before=1, check=check)


def _branches(t: Target, go_is_target: bool) -> dict[str, Step]:
    go: Step = Llm(id="go", model="m", prompt="Go {{ input.text }}")
    if go_is_target:
        go = t.tool("go") if t.fault.klass == "tool" else Llm(
            id="go", model="m", prompt=t.mark + "Go {{ input.text }}", **t.call())
    return {"go": go, "other": Llm(id="other", model="m", prompt="Other {{ input.text }}")}


def _route_model(t: Target) -> Case:
    on_branch = t.fault.klass == "tool"
    classifier = Classifier(model="m", prompt=("" if on_branch else t.mark)
                            + "Pick for {{ input.text }}")
    path = "pick/go" if on_branch else "pick"
    return Case([Route(id="pick", classifier=classifier, branches=_branches(t, on_branch))],
                path, path, rules=[{"match": {"contains": "Pick for"}, "reply": {"branch": "go"}}])


def _route_rule(t: Target) -> Case:
    on_rule = t.fault.klass == "template"
    rule = "input.absent.deeper" if on_rule else "'go' if input.text else 'other'"
    path = "pick" if on_rule else "pick/go"
    cause = ("route rule failed to evaluate", "absent") if on_rule else ()
    return Case([Route(id="pick", classifier=Classifier(rule=rule),
                       branches=_branches(t, not on_rule))], path, path, cause=cause)


def _sections(t: Target) -> Case:
    b: Step = (t.tool("b") if t.fault.klass == "tool" else
               Llm(id="b", model="m", prompt=t.mark + "Section {{ input.text }}", **t.call()))

    def check(legato: Legato, run: RunRecord, steps: dict[str, Any]) -> None:
        assert steps["fan/a"].status == steps["fan/c"].status == "succeeded"
        if run.status == "succeeded":
            assert steps["fan"].detail["failed"] == ["fan/b"]
            assert set(steps["fan"].output) == {"a", "c"}
            assert steps["after"].status == "succeeded"
        else:
            assert "after" not in steps

    return Case([
        Parallel(id="fan", aggregate=Aggregate(method="merge"), **t.fan_out(2, 3), sections=[
            Tool(id="a", tool="word_count", args={"text": "{{ input.text }}"}),
            b,
            Tool(id="c", tool="keywords", args={"text": "{{ input.text }}"}),
        ]),
        Tool(id="after", tool="word_count", args={"text": "{{ outputs.fan }}"}),
    ], "fan", "fan/b", check=check)


def _nested(shape: str) -> Callable[[Target], Case]:
    """A section that is itself a composite — a chain (a tool, then the target) or a route (a
    rule choosing the target) — so the failure comes out of a nested task (a route's branch
    replaces the route's task inside the chord)."""

    def build(t: Target) -> Case:
        leaf: Step = (t.tool("leaf") if t.fault.klass == "tool" else
                      Llm(id="leaf", model="m", prompt=t.mark + "Leaf {{ input.text }}",
                          **t.call()))
        plain = Tool(id="plain", tool="word_count", args={"text": "{{ input.text }}"})
        b: Step = (Chain(id="b", steps=[plain, leaf]) if shape == "chain" else
                   Route(id="b", classifier=Classifier(rule="'leaf'"),
                         branches={"leaf": leaf, "plain": plain}))

        def check(legato: Legato, run: RunRecord, steps: dict[str, Any]) -> None:
            assert steps["fan/a"].status == steps["fan/c"].status == "succeeded"
            if run.status == "succeeded":
                assert steps["fan"].detail["failed"] == ["fan/b/leaf"]
                assert set(steps["fan"].output) == {"a", "c"}

        return Case([Parallel(id="fan", aggregate=Aggregate(method="merge"), **t.fan_out(2, 3),
                              sections=[
            Tool(id="a", tool="word_count", args={"text": "{{ input.text }}"}),
            b,
            Tool(id="c", tool="keywords", args={"text": "{{ input.text }}"}),
        ])], "fan", "fan/b/leaf", check=check)

    return build


def _route_to_sections(t: Target) -> Case:
    """A route whose chosen branch is a parallel step: the route's task becomes a chord."""
    case = _sections(t)
    fan, after = case.steps

    def check(legato: Legato, run: RunRecord, steps: dict[str, Any]) -> None:
        assert steps["pick/fan/a"].status == steps["pick/fan/c"].status == "succeeded"
        assert steps["pick"].output == {"branch": "fan"}
        if run.status == "succeeded":
            assert steps["pick/fan"].detail["failed"] == ["pick/fan/b"]
            assert steps["after"].status == "succeeded"
        else:
            assert "after" not in steps

    route = Route(id="pick", classifier=Classifier(rule="'fan'"),
                  branches={"fan": fan, "other": Tool(id="other", tool="word_count",
                                                      args={"text": "{{ input.text }}"})})
    return Case([route, after], "pick/fan", "pick/fan/b", check=check)


def _vote(quorum: int | None) -> Callable[[Target], Case]:
    def build(t: Target) -> Case:
        voter = Llm(id="voter", model="m", output_schema=ANSWER, max_repairs=1,
                    prompt="{% if index == 0 %}" + t.mark + "{% endif %}"
                    "Vote {{ index }} on {{ input.text }}")

        def check(legato: Legato, run: RunRecord, steps: dict[str, Any]) -> None:
            voters = [steps[f"poll/voter[{i}]"] for i in range(3)]
            if t.fault.klass == "budget":  # the run's budget: every voter is refused
                assert [v.status for v in voters] == ["failed"] * 3
                return
            assert [v.status for v in voters] == ["failed", "succeeded", "succeeded"]
            if run.status == "succeeded":  # one yes, one no: a tie goes to the first
                assert run.output == {"answer": "yes"}
                assert steps["poll"].detail["failed"] == ["poll/voter[0]"]

        return Case([Parallel(id="poll", aggregate=Aggregate(method="majority"),
                              vote=Vote(n=3, quorum=quorum, step=voter), **t.fan_out(2, 3))],
                    "poll", "poll/voter[0]", check=check, rules=[
                        {"match": {"contains": "Vote 1 on"}, "reply": {"answer": "yes"}},
                        {"match": {"contains": "Vote 2 on"}, "reply": {"answer": "no"}}])

    return build


def _orchestrate(rounds: int, target: str = "worker") -> Callable[[Target], Case]:
    """target: `worker` (worker 1 of 2 in round 0, under the cell's policy), `worker_round1`
    (worker 3: the second of round 1's two, the last round), `planner` (round 0's), `replan`
    (round 1's, asked inside legato.synthesize) or `synthesizer`."""

    def build(t: Target) -> Case:
        def at(where: str, condition: str = "true") -> str:
            return "{% if " + condition + " %}" + t.mark + "{% endif %}" if where == target else ""

        replan_round = "round == 0" if target == "planner" else "round == 1"
        study = Orchestrate(
            # on_failure and min_success hold per round (a round's fan-in sees its own workers)
            id="study", max_rounds=rounds, max_subtasks=2, **t.fan_out(1, 2),
            planner=ModelCall(model="m", system="You plan.", prompt=at(
                "replan" if target == "replan" else "planner", replan_round)
                + "Plan round {{ round }} for {{ input.text }}"),
            worker=ModelCall(model="m", prompt=at("worker", "subtask.title == 'second'")
                             + at("worker_round1", "subtask.title == 'fourth'")
                             + "Do {{ subtask.title }}",
                             **(t.call() if target.startswith("worker") else {})),
            synthesizer=ModelCall(model="m", prompt=at("synthesizer") + "Sum up:"
                                  "{% for r in results %} {{ r.subtask.title }}{% endfor %}",
                                  **(t.call() if target == "synthesizer" else {})))
        def plan(*titles: str) -> dict[str, Any]:
            return {"subtasks": [{"title": title, "instructions": "go"} for title in titles]}

        more = plan("third", "fourth") if target == "worker_round1" else plan()

        def check(legato: Legato, run: RunRecord, steps: dict[str, Any]) -> None:
            if target == "planner":
                assert not [p for p in steps if "/worker[" in p]
                return
            if target == "worker_round1":
                workers = [steps[f"study/worker[{i}]"].status for i in range(4)]
                refused = 2 if t.fault.klass == "budget" else 1
                assert workers == ["succeeded"] * (4 - refused) + ["failed"] * refused
                if run.status == "succeeded":
                    assert steps["study"].detail["failed"] == ["study/worker[3]"]
                    assert run.output.endswith("] Sum up: first second third"), run.output
                return
            workers = [steps[f"study/worker[{i}]"].status for i in range(2)]
            if target != "worker":
                assert workers == ["succeeded"] * 2
                assert "study" not in steps or target == "synthesizer"
                return
            budget = t.fault.klass == "budget"
            assert workers == (["failed"] * 2 if budget else ["succeeded", "failed"])
            if run.status == "succeeded":  # the synthesizer saw the worker that succeeded
                assert steps["study"].detail["failed"] == ["study/worker[1]"]
                assert run.output.endswith("] Sum up: first"), run.output

        path, failed, before = {
            "worker": ("study", "study/worker[1]", 1),
            "worker_round1": ("study", "study/worker[3]", 4),
            "planner": ("study/plan", "study/plan", 0),
            "replan": ("study/plan[1]", "study/plan[1]", 3),
            "synthesizer": ("study", "study", 3 if rounds == 1 else 4),
        }[target]
        return Case([study], path, failed, calls_before=before, check=check, rules=[
            {"match": {"contains": "Plan round 0"}, "reply": plan("first", "second")},
            {"match": {"contains": "Plan round 1"}, "reply": more}])

    return build


def _llm_aggregate(t: Target) -> Case:
    """The fan-in's own model call fails (no branch does): the parallel step fails."""
    schema: dict[str, Any] = {"output_schema": LABEL} if t.fault.id == "malformed" else {}
    fan = Parallel(id="fan", aggregate=Aggregate(
        method="llm", model="m", prompt=t.mark + "Combine {{ results }}", **schema), sections=[
        Tool(id="a", tool="word_count", args={"text": "{{ input.text }}"}),
        Llm(id="b", model="m", prompt="Section {{ input.text }}"),
        Tool(id="c", tool="keywords", args={"text": "{{ input.text }}"}),
    ])

    def check(legato: Legato, run: RunRecord, steps: dict[str, Any]) -> None:
        assert all(steps[f"fan/{s}"].status == "succeeded" for s in "abc")

    return Case([fan], "fan", "fan", calls_before=1, check=check)


def _run_output(t: Target) -> Case:
    """The pipeline's `output` template fails when the run closes, after every step succeeded."""
    def check(legato: Legato, run: RunRecord, steps: dict[str, Any]) -> None:
        assert steps["ask"].status == "succeeded"

    return Case([Llm(id="ask", model="m", prompt="Answer {{ input.text }}")], "output failed",
                "", cause=(t.fault.cause[0].removeprefix("template failed: "), "absent"),
                output=t.mark + "{{ outputs.ask }}", check=check)


def _evaluate(target: str) -> Callable[[Target], Case]:
    """target: the `evaluator` in round 1 (after a round that did not pass), or the `generator`
    in round 0."""

    def build(t: Target) -> Case:
        def at(where: str, round_no: int) -> str:
            if where != target:
                return ""
            return "{% if round == " + str(round_no) + " %}" + t.mark + "{% endif %}"

        polish = Evaluate(
            id="polish", max_rounds=3,
            generator=ModelCall(model="m", prompt=at("generator", 0)
                                + "Write about {{ input.text }} (round {{ round }})",
                                **(t.call() if target == "generator" else {})),
            evaluator=ModelCall(model="m", system="You judge.", prompt=at("evaluator", 1)
                                + "Judge round {{ round }}: {{ candidate }}"))

        def check(legato: Legato, run: RunRecord, steps: dict[str, Any]) -> None:
            assert "polish" not in steps
            if target == "evaluator":
                assert steps["polish/round[0]"].status == "succeeded"

        path = "polish/round[1]" if target == "evaluator" else "polish/round[0]"
        return Case([polish], path, path, calls_before=3 if target == "evaluator" else 0,
                    check=check, rules=[{"match": {"contains": "Judge round 0"},
                                         "reply": {"pass": False, "score": 0.1,
                                                   "feedback": "more"}}])

    return build


def _agent(t: Target) -> Case:
    helper = Agent(id="helper", model="m", max_turns=3, tools=["word_count", "explode", "stall"],
                   system="You use tools.", prompt=t.mark + "Help with {{ input.text }}")
    if t.fault.klass == "tool":  # the tool's error goes back to the model, which answers
        call = ({"name": "explode", "arguments": {"text": "x"}} if t.fault.id == "tool_raises"
                else {"name": "stall", "arguments": {"seconds": 1}})

        def told(legato: Legato, run: RunRecord, steps: dict[str, Any]) -> None:
            assert run.output == "The tool failed."
            (result,) = [m for m in steps["helper/turn[0]"].output["messages"]
                         if m["role"] == "tool"]
            assert all(c in result["content"] for c in t.fault.cause), result

        return Case([helper], "", "", succeeds=True, check=told, rules=[
            {"match": {"any_contains": '"error":'}, "reply": "The tool failed."},
            {"match": {"contains": "Help with"}, "tool_calls": [call]}])
    turn = "helper/turn[1]" if t.fault.klass == "budget" else "helper/turn[0]"
    count = {"name": "word_count", "arguments": {"text": "one two"}}
    return Case([helper], turn, turn, calls_before=1,
                rules=[{"match": {"contains": "Help with"}, "tool_calls": [count]}])


def _wait(t: Target) -> Case:
    """A wait nobody signals times out, under each `on_timeout`: the run fails at the wait, goes
    on with the default, or jumps to a later step over the ones between."""
    policy = t.policy.on_failure if t.policy else "fail"
    on_timeout = {"fail": "fail", "value": "value", "jump": "after"}[policy]
    default = {"approved": False} if policy == "value" else None
    steps: list[Step] = [
        Llm(id="draft", model="m", prompt="Draft {{ input.text }}"),
        Wait(id="approve", schema=ANSWERED, timeout=WAIT_TIMEOUT, on_timeout=on_timeout,
             default=default),
        Llm(id="between", model="m", prompt="Between {{ outputs.approve }}"),
        Llm(id="after", model="m", prompt="After {{ input.text }}"),
    ]

    def check(legato: Legato, run: RunRecord, steps: dict[str, Any]) -> None:
        assert steps["draft"].status == "succeeded"
        if policy == "fail":
            assert "between" not in steps and "after" not in steps
            return
        approve = steps["approve"]
        assert approve.status == "succeeded" and approve.detail["timed_out"] is True
        assert steps["after"].status == "succeeded"
        if policy == "value":
            assert approve.output == default and steps["between"].status == "succeeded"
        else:
            assert approve.detail["jumped_to"] == "after" and "between" not in steps

    failed = "approve" if policy == "fail" else ""
    return Case(steps, "approve", failed, check=check)


def _pipeline(t: Target) -> Case:
    """A `pipeline` step whose child run fails (its model call: HTTP 400), under each
    `on_failure`; or whose own input template fails (no child starts, whatever the policy)."""
    policy = t.policy.on_failure if t.policy else "fail"
    fields: dict[str, Any] = {"on_failure": policy}
    if policy == "fallback":
        fields["fallback"] = "no summary"
    text = t.mark + "{{ input.text }}" if t.fault.klass == "model" else t.fault.template
    kid = PipelineStep(id="kid", pipeline="summarize", input={"text": text}, **fields)
    steps: list[Step] = [kid, Llm(id="after", model="m", prompt="After {{ outputs.kid }}")]

    def check(legato: Legato, run: RunRecord, steps: dict[str, Any]) -> None:
        children = legato.store.children(run.id)
        if t.fault.klass == "template":
            assert children == {}  # nothing started
            return
        child = legato.status(children["kid"])
        assert child.status == "failed" and "HTTP 400" in (child.error or ""), child
        if policy == "fail":
            assert "after" not in steps
            return
        kid_record = steps["kid"]
        assert kid_record.status == "succeeded" and "HTTP 400" in kid_record.detail["child_error"]
        assert kid_record.output == ("no summary" if policy == "fallback" else None)
        assert steps["after"].status == "succeeded"

    failing = policy == "fail" or t.fault.klass == "template"
    cause = ("child run", "(summarize) failed", "HTTP 400") if t.fault.klass == "model" else ()
    return Case(steps, "kid", "kid" if failing else "", cause=cause, check=check,
                fails=t.fault.klass == "template")


ON_MODEL_CALLS = ("http400", "http503", "timeout", "malformed", "budget", "template")
TOOL = ("tool_raises", "tool_timeout")
NESTED = ("http400", "http503", "budget", "template", "tool_raises")  # the nesting is the point


@dataclass(frozen=True)
class Kind:
    build: Callable[[Target], Case]
    faults: tuple[str, ...]
    policies: bool = False  # the fan-out policies (POLICIES)
    own: tuple[Policy, ...] = ()  # policies of the kind's own, for the faults in `own_for`
    own_for: tuple[str, ...] = ()


KINDS = {
    "llm": Kind(_llm, (*ON_MODEL_CALLS, "filter")),
    "tool": Kind(_tool, (*TOOL, "template", "filter")),
    "chain": Kind(_chain, ON_MODEL_CALLS + TOOL),
    "route_model": Kind(_route_model, ON_MODEL_CALLS + TOOL),
    "route_rule": Kind(_route_rule, ON_MODEL_CALLS + TOOL),
    "sections": Kind(_sections, ON_MODEL_CALLS + TOOL, policies=True),
    "route_to_sections": Kind(_route_to_sections, NESTED, policies=True),
    "sections_chain": Kind(_nested("chain"), NESTED, policies=True),
    "sections_route": Kind(_nested("route"), NESTED, policies=True),
    "vote": Kind(_vote(None), ON_MODEL_CALLS, policies=True),
    "vote_quorum": Kind(_vote(2), ON_MODEL_CALLS, policies=True),
    "orchestrate_1": Kind(_orchestrate(1), ON_MODEL_CALLS, policies=True),
    "orchestrate_2": Kind(_orchestrate(2), ON_MODEL_CALLS, policies=True),
    "orchestrate_2_last_round": Kind(_orchestrate(2, "worker_round1"), ON_MODEL_CALLS,
                                     policies=True),
    "orchestrate_planner": Kind(_orchestrate(1, "planner"), ON_MODEL_CALLS),
    "orchestrate_replan": Kind(_orchestrate(2, "replan"), ON_MODEL_CALLS),
    "orchestrate_1_synthesizer": Kind(_orchestrate(1, "synthesizer"), ON_MODEL_CALLS),
    "orchestrate_2_synthesizer": Kind(_orchestrate(2, "synthesizer"), ON_MODEL_CALLS),
    "llm_aggregate": Kind(_llm_aggregate, ON_MODEL_CALLS),
    "evaluate": Kind(_evaluate("evaluator"), ON_MODEL_CALLS),
    "evaluate_generator": Kind(_evaluate("generator"), ON_MODEL_CALLS),
    "agent": Kind(_agent, tuple(f for f in ON_MODEL_CALLS if f != "malformed") + TOOL),
    "run_output": Kind(_run_output, ("template",)),
    "wait": Kind(_wait, ("no_signal",), own=tuple(ON_TIMEOUT), own_for=("no_signal",)),
    "pipeline": Kind(_pipeline, ("http400", "template"), own=tuple(ON_CHILD_FAILURE),
                     own_for=("http400", "template")),
}


def _cells() -> list[Any]:
    cells = []
    for name, kind in KINDS.items():
        for fault in kind.faults:
            policies: list[Policy | None] = [None]
            if fault in kind.own_for:
                policies = list(kind.own)
            elif kind.policies:
                policies = list(POLICIES)
            for policy in policies:
                if (policy is not None and policy.succeeds and fault == "budget"
                        and name.startswith(("vote", "orchestrate"))):
                    continue  # the run's budget refuses every voter / worker: see the docstring
                cell_id = "-".join([name, fault] + ([policy.id] if policy else []))
                cells.append(pytest.param(name, fault, policy, id=cell_id))
    return cells


def _run(legato: Legato, fake: Any, steps: list[Step], *, fault: Fault, rules: list[Any],
         budget: Budget | None = None, output: str | None = None
         ) -> tuple[RunRecord, dict[str, Any], str]:
    """Submit one ad-hoc pipeline on its own model name (its own breaker state, its own counts
    at the fake model); wait for it, time-boxed. Its run record, step records by path, model."""
    name = f"mx-{uuid.uuid4().hex[:8]}"
    config = ModelConfig(base_url=os.environ["LEGATO_MODEL_BASE_URL"], model=name,
                         structured_output="json_object", **fault.model)
    pipeline = Pipeline(name="failure_matrix", models={"m": config}, steps=steps, budget=budget,
                        output=output)
    fake.script({"rules": rules, "faults": fault.faults})
    started = time.monotonic()
    run_id = legato.submit(pipeline, {"text": "three words here"})
    try:
        run = legato.wait(run_id, timeout=WAIT_SECONDS)
    except TimeoutError:
        left = {s.path: (s.status, s.error) for s in legato.steps(run_id)}
        status = legato.status(run_id).status
        # Cancelled, so the stall sweeper does not send it again minutes later, into other cells.
        legato.cancel(run_id, reason="the failure matrix gave up on it")
        pytest.fail(f"run still {status} after {WAIT_SECONDS}s "
                    f"(a failure that is not a value); steps: {left}")
    assert time.monotonic() - started < WAIT_SECONDS
    assert "stalled" not in (run.error or "")  # the sweeper did not end it
    steps_by_path = {s.path: s for s in legato.steps(run_id)}
    assert [p for p, s in steps_by_path.items() if s.status == "running"] == []
    return run, steps_by_path, name


@pytest.mark.parametrize(("kind", "fault_id", "policy"), _cells())
def test_a_failure_is_a_value_and_the_run_ends(legato: Legato, fake: Any, kind: str,
                                               fault_id: str, policy: Policy | None) -> None:
    fault = FAULTS[fault_id]
    case = KINDS[kind].build(Target(fault, policy))
    cause = case.cause or fault.cause
    budget = None
    if fault.klass == "budget":
        budget = (Budget(max_calls=case.calls_before) if case.calls_before
                  else Budget(deadline_seconds=0.001))
    run, steps, _ = _run(legato, fake, case.steps, fault=fault, rules=case.rules, budget=budget,
                         output=case.output)

    succeeds = not case.fails and (case.succeeds or (policy is not None and policy.succeeds))
    if succeeds:
        assert run.status == "succeeded", run.error
        assert run.error is None and run.output is not None
    else:
        assert run.status == "failed", run.output
        assert run.error is not None and run.error.startswith(f"{case.path}: "), run.error
        assert all(c in run.error for c in cause), run.error
        if case.failed and case.failed != case.path:  # a fan-out names the member that failed
            assert case.failed in run.error or fault.klass == "budget", run.error
            assert steps[case.path].status == "failed"
    if case.failed:
        record = steps[case.failed]
        assert record.status == "failed" and record.error_type == fault.error_type, record
        assert all(c in (record.error or "") for c in cause), record.error
    if case.check is not None:
        case.check(legato, run, steps)


NO_FAULT = Fault("none", "none", (), "")
UPSTREAM = ["llm", "tool", "chain", "route_model", "route_rule", "sections", "sections_route",
            "vote", "vote_quorum", "orchestrate_1", "orchestrate_2", "evaluate", "agent", "wait",
            "pipeline"]


@pytest.mark.parametrize("kind", UPSTREAM)
def test_a_failure_before_a_step_is_passed_on_through_it(legato: Legato, fake: Any,
                                                         kind: str) -> None:
    """Every kind's task passes a failed result from earlier in the chain on, untouched (fan-outs
    through every member and the fan-in): the run fails with the first failure, nothing after
    it runs or calls a model."""
    case = KINDS[kind].build(Target(NO_FAULT, None))
    boom = Tool(id="boom", tool="explode", args={"text": "{{ input.text }}"})
    run, steps, model = _run(legato, fake, [boom, *case.steps], fault=NO_FAULT,
                             rules=case.rules)

    assert run.status == "failed"
    assert run.error is not None
    assert run.error.startswith("boom: tool 'explode' raised RuntimeError: exploded"), run.error
    assert list(steps) == ["boom"]
    assert model not in fake.stats()["by_model"]  # no model call
