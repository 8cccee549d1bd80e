"""`legato replay RUN`: run a finished run again from its recorded model calls, and compare.

The run's pinned spec and input are submitted again with the response cache in `replay` mode, so
every model call is answered from the cache (a call that was not recorded fails the step: nothing
reaches a model). A run replays fully when it was recorded with `cache: read-write` (per pipeline,
or LEGATO_CACHE on the workers). The report lists every step whose output differs, byte for byte
as canonical JSON, and any difference in the run's status or output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from legato.client import Legato
    from legato.envelope import RunRecord


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Difference:
    where: str  # "run", "status" or a step path
    recorded: Any
    replayed: Any


@dataclass
class ReplayReport:
    original: RunRecord
    replay: RunRecord
    differences: list[Difference] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences


def replay(legato: Legato, run_id: str, *, timeout: float = 300.0) -> ReplayReport:
    original = legato.status(run_id)
    if not original.done:
        raise ValueError(f"run {run_id} is {original.status}, not finished")
    spec = legato.store.get_spec(original.spec_hash).model_copy(update={"cache": "replay"})
    again = legato.wait(legato.submit(spec, original.input), timeout=timeout)
    report = ReplayReport(original, again)
    if original.status != again.status:
        report.differences.append(Difference("status", original.status, again.status))
    if _canonical(original.output) != _canonical(again.output):
        report.differences.append(Difference("run", original.output, again.output))
    before = {s.path: s for s in legato.steps(original.id)}
    after = {s.path: s for s in legato.steps(again.id)}
    for path in sorted(set(before) | set(after)):
        b, a = before.get(path), after.get(path)
        recorded = b.error if b is not None and b.error else (b.output if b else None)
        replayed = a.error if a is not None and a.error else (a.output if a else None)
        if b is None or a is None or _canonical(recorded) != _canonical(replayed):
            report.differences.append(Difference(path, recorded, replayed))
    return report
