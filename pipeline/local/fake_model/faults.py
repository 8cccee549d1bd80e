"""Which faults fire for a request: evaluated in order, latency adds up, first other one decides."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from legato.local.fake_model.prompt import ChatRequest
from legato.local.fake_model.script import STREAM_FAULTS, Fault, Script


@dataclass
class Decision:
    delay_s: float = 0.0  # total latency to add before answering (hang time included)
    fault: Fault | None = None  # the status/malformed/hang/drop fault that decides, if any
    fired: list[str] = field(default_factory=list)  # "<index>:<kind>" of every fault that fired
    event_delay_s: float = 0.0  # a streamed answer's wait before each event (stream_slow)


def _jitter(jitter_ms: float, *seed_parts: object) -> float:
    if jitter_ms <= 0:
        return 0.0
    return random.Random(":".join(map(str, seed_parts))).uniform(0, jitter_ms)


class FaultBook:
    """The script's faults with their usage counts (cleared by `reset`)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.reset()

    def reset(self) -> None:
        self.seen = [0] * len(self.script.faults)  # matching requests, per fault
        self.fired = [0] * len(self.script.faults)
        self.requests = 0

    def decide(self, req: ChatRequest) -> Decision:
        script, decision = self.script, Decision()
        self.requests += 1
        base_ms = script.latency_ms + _jitter(
            script.jitter_ms, script.seed, "base", req.digest, self.requests
        )
        decision.delay_s = base_ms / 1000
        for i, fault in enumerate(script.faults):
            if fault.kind not in ("latency", "stream_slow") and decision.fault is not None:
                continue  # a fault already decided the response; later ones are not evaluated
            if not fault.match.matches(req) or (fault.kind in STREAM_FAULTS and not req.stream):
                continue
            self.seen[i] += 1
            if fault.times is not None and self.fired[i] >= fault.times:
                continue
            if fault.every is not None and self.seen[i] % fault.every:
                continue
            self.fired[i] += 1
            decision.fired.append(f"{i}:{fault.kind}")
            if fault.kind == "latency":
                extra = _jitter(fault.jitter_ms, script.seed, i, req.digest, self.seen[i])
                decision.delay_s += (fault.ms + extra) / 1000
            elif fault.kind == "stream_slow":
                decision.event_delay_s += fault.ms / 1000
            else:
                decision.fault = fault
                if fault.kind == "hang":
                    decision.delay_s += fault.seconds
        return decision
