"""Sending a signal to a waiting step: checked, stored once, and the parked step resumed once.

`send_signal` is what `Legato.signal`, `legato signal` and the public task `legato.signal` all
do, to a wait step or to an agent step waiting for a tool call's approval. It refuses
(SignalRefused, nothing changed) a step the run does not have, a step that takes no signals, a
finished run, a payload off the step's schema, and a second signal for the same step (the first
wins). A signal may come before the run reaches the wait: it is kept, and the step consumes it
when it gets there. Timeouts come through here too (`send_timeout`, from the sweeper): a
timeout only ends a step that is parked, never one that was signalled first.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery

from legato import tree
from legato.envelope import ToolCall
from legato.errors import RunNotFound, SignalRefused
from legato.kinds import wait as wait_kind
from legato.kinds.agent import Agent, check_decision
from legato.kinds.wait import Wait
from legato.store import RunStore
from legato.waits import signal_json

# A signal's payload is stored in the run; keep it to a size a person or webhook sends.
MAX_SIGNAL_BYTES = 256 * 1024


@dataclass
class SignalReply:
    """What a signal did: `resumed` (the step was parked and is on its way again), `stored`
    (the run has not reached the step yet: it will find it), or `timed out`."""

    run_id: str
    path: str
    state: str


def send_signal(store: RunStore, app: Celery, run_id: str, step: str, data: Any, *,
                by: str | None = None) -> SignalReply:
    """Signal the wait step `step` (its id or path) of run `run_id` with payload `data`."""
    run = store.get_run(run_id)  # RunNotFound
    where = f"run {run_id} step {step}"
    if run.done:
        raise SignalRefused(f"signal for {where} refused: the run is {run.status}")
    path, check = _target(store, run.spec_hash, run_id, step)
    where = f"run {run_id} step {path}"
    _check_size(data, where)
    check(data, where)
    now = time.time()
    done = store.waits.signal(run_id, path, signal_json(data, at=now, by=by), now=now)
    return _finish(store, app, run_id, path, done, where)


def send_timeout(store: RunStore, app: Celery, run_id: str, path: str) -> SignalReply | None:
    """End a parked step's wait by its timeout (the sweeper's); None if it is not parked any
    more (a signal came first, or the run finished)."""
    now = time.time()
    done = store.waits.signal(run_id, path, signal_json(None, at=now, timeout=True), now=now,
                              only_if_parked=True)
    if done.state not in ("resumed",):
        return None
    return _finish(store, app, run_id, path, done, f"run {run_id} step {path}",
                   state="timed out")


def _finish(store: RunStore, app: Celery, run_id: str, path: str, done: Any, where: str, *,
            state: str | None = None) -> SignalReply:
    if done.state == "missing":
        raise RunNotFound(f"no run {run_id!r}")
    if done.state == "finished":
        raise SignalRefused(f"signal for {where} refused: the run is {done.run_status}")
    if done.state == "already":
        raise SignalRefused(f"signal for {where} refused: already signalled ({_first(done.prior)})")
    if done.state == "resumed" and done.resume is not None:
        # The script took the parked entry: only this caller sends it. Dying before the send is
        # safe: unconfirmed, the sweeper sends it after LEGATO_RESUME_GRACE_SECONDS.
        app.signature(done.resume).apply_async()
        store.waits.confirm(run_id, path)
    return SignalReply(run_id, path, state or done.state)


def _first(prior: str | None) -> str:
    """How the step was signalled first, in a few words."""
    try:
        first = json.loads(prior or "")
    except ValueError:
        return "earlier"
    if not isinstance(first, dict):
        return "earlier"
    if first.get("timeout"):
        return "it timed out"
    if first.get("status") == "succeeded":
        return "the step is done"
    at = time.strftime("%H:%M:%S", time.localtime(first.get("at") or 0))
    return f"at {at}" + (f" by {first['by']}" if first.get("by") else "")


Check = Callable[[Any, str], Any]


def _target(store: RunStore, spec_hash: str, run_id: str, step: str) -> tuple[str, Check]:
    """The journal path a signal to `step` (an id or path) goes to, and its payload's check: a
    wait step's own path and schema, or an agent's pending approval. SignalRefused otherwise."""
    spec = store.get_spec(spec_hash)
    waits = []
    for visit in tree.walk(spec.steps):
        if isinstance(visit.step, Wait | Agent):
            waits.append(visit.path)
        if step not in (visit.path, visit.step.id):
            continue
        if isinstance(visit.step, Wait):
            return visit.path, functools.partial(wait_kind.check_payload, visit.step)
        if isinstance(visit.step, Agent):
            return _approval(store, run_id, visit.path)
        raise SignalRefused(f"signal for run {run_id} step {visit.path} refused: it is a "
                            f"{visit.step.kind} step, not a wait")
    known = ", ".join(waits) or "none"
    raise SignalRefused(f"signal for run {run_id} refused: no step {step!r} in pipeline "
                        f"{spec.name!r} (its waits and agents: {known})")


def _approval(store: RunStore, run_id: str, agent: str) -> tuple[str, Check]:
    """The agent's parked approval and the check of a decision on its proposed calls."""
    for path in sorted(store.waits.parked(run_id)):
        if path.startswith(f"{agent}/approval["):
            record = store.get_step(run_id, path)
            proposed = (record.detail.get("proposed") if record else None) or []
            pending = [ToolCall.model_validate(c) for c in proposed]
            return path, functools.partial(check_decision, pending)
    raise SignalRefused(f"signal for run {run_id} step {agent} refused: the agent is not "
                        f"waiting for an approval")


def _check_size(data: Any, where: str) -> None:
    try:
        size = len(json.dumps(data, ensure_ascii=False, allow_nan=False).encode())
    except (TypeError, ValueError) as exc:
        raise SignalRefused(f"signal for {where} refused: the payload is not JSON: {exc}") \
            from None
    if size > MAX_SIGNAL_BYTES:
        raise SignalRefused(f"signal for {where} refused: {size} bytes of JSON, over the limit "
                            f"of {MAX_SIGNAL_BYTES}")
