"""A run's parked steps as the forms that answer them: a wait step's form is made from its
schema (one field per property, typed), an agent's approval shows the proposed calls with
approve / reject (with a reason) / edit (the arguments). Both send a signal (legato.signals),
which checks the answer against the same schema: the form is a convenience, the signal is the
check."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from legato import tree
from legato.html_report import escape
from legato.kinds.agent import Agent
from legato.kinds.wait import Wait
from legato.spec import Pipeline
from legato.store import RunStore

APPROVAL = re.compile(r"^(?P<agent>.+)/approval\[\d+\]$")


@dataclass
class Waiting:
    path: str  # the journal path that is parked
    target: str  # the step a signal names (a wait's path, an agent's path)
    kind: str  # "wait" or "approval"
    waits_for: str
    schema: dict[str, Any] | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)


def waiting_steps(store: RunStore, run_id: str, spec: Pipeline | None) -> list[Waiting]:
    parked = store.waits.parked(run_id)
    if not parked or spec is None:
        return []
    steps = {visit.path: visit.step for visit in tree.walk(spec.steps)}
    found = []
    for path, entry in sorted(parked.items()):
        what = str(entry.get("for") or "a signal")
        step = steps.get(path)
        if isinstance(step, Wait):
            found.append(Waiting(path, path, "wait", what, schema=step.schema_))
            continue
        approval = APPROVAL.match(path)
        if approval and isinstance(steps.get(approval["agent"]), Agent):
            record = store.get_step(run_id, path)
            calls = list((record.detail.get("proposed") if record else None) or [])
            found.append(Waiting(path, approval["agent"], "approval", what, calls=calls))
    return found


def _input(name: str, spec: dict[str, Any], required: bool) -> str:
    kind = spec.get("type")
    label = escape(name) + (" (required)" if required else "")
    hint = f'<small>{escape(spec["description"])}</small>' if spec.get("description") else ""
    attrs = f'data-field="{escape(name)}" data-type="{escape(str(kind or "json"))}"'
    if kind == "boolean":
        return f'<label class="check"><input type="checkbox" {attrs}> {label}</label>{hint}'
    if kind in ("number", "integer"):
        return f'<label>{label}<input type="number" step="any" {attrs}></label>{hint}'
    if kind == "string" and "enum" not in spec:
        big = int(spec.get("maxLength") or 1000) > 200
        box = f'<textarea rows="3" {attrs}></textarea>' if big else f'<input {attrs}>'
        return f"<label>{label}{box}</label>{hint}"
    return (f'<label>{label} (JSON)<textarea rows="2" {attrs} data-json="1"></textarea></label>'
            f"{hint}")


def _wait_form(w: Waiting) -> str:
    schema = w.schema or {}
    props = schema.get("properties") if schema.get("type") == "object" else None
    if isinstance(props, dict) and props:
        required = set(schema.get("required") or ())
        fields = "".join(_input(n, p if isinstance(p, dict) else {}, n in required)
                         for n, p in props.items())
    else:
        fields = ('<label>payload (JSON)<textarea rows="4" data-field="" data-json="1">'
                  '</textarea></label>')
    return (f'<form class="wait" data-kind="wait" data-step="{escape(w.target)}">'
            f'<h3>{escape(w.path)}: {escape(w.waits_for)}</h3>{fields}'
            '<div class="buttons"><button type="submit">Send</button>'
            '<span class="said" role="status"></span></div></form>')


def _approval_form(w: Waiting) -> str:
    shown = json.dumps(w.calls, indent=2, ensure_ascii=False)
    edit = ""
    if len(w.calls) == 1:
        arguments = json.dumps(w.calls[0].get("arguments") or {}, indent=2, ensure_ascii=False)
        edit = (f'<label>arguments (to edit the call)<textarea rows="4" name="arguments">'
                f'{escape(arguments)}</textarea></label>')
    return (f'<form class="wait" data-kind="approval" data-step="{escape(w.target)}">'
            f'<h3>{escape(w.path)}: {escape(w.waits_for)}</h3>'
            f'<div class="label">proposed calls</div><pre>{escape(shown)}</pre>'
            '<label>reason (for a rejection)<input name="reason"></label>' + edit +
            '<div class="buttons"><button type="submit" data-decision="approve">Approve</button>'
            '<button type="submit" data-decision="reject">Reject</button>'
            + ('<button type="submit" data-decision="edit">Edit and run</button>' if edit
               else "") + '<span class="said" role="status"></span></div></form>')


def waits_section(waiting: list[Waiting]) -> str:
    if not waiting:
        return '<section id="waits"></section>'
    forms = "".join(_approval_form(w) if w.kind == "approval" else _wait_form(w)
                    for w in waiting)
    return f'<section id="waits"><h2>Waiting for an answer</h2>{forms}</section>'
