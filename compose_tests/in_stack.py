"""Run inside a stack's container (`docker-compose exec -T worker-control python - CMD ARG < this`):
the test's hands in the stack, answering on stdout with one JSON document.

  submit JOBS       JOBS: [[pipeline name, input], ...] or [[{"steps": ...}, input], ...]
                    (a dict is an inline pipeline) -> [run_id, ...]
  wait IDS SECONDS  -> {run_id: {"record": RunRecord, "steps": [StepRecord, ...]}}; polls, so a
                    Redis that goes away and comes back mid-wait is ridden out; runs still not
                    done at the deadline, or unknown for 30 s, come back with their last record
  queues            -> {node name: [queue, ...]} from the workers' answers (Celery inspect)
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from legato import Legato, Pipeline
from legato.errors import RunNotFound

# Seconds a run may be unknown (its Redis record lost, e.g. without AOF) before the wait gives up.
MISSING_GRACE = 30.0


def submit(jobs: list[list[Any]]) -> list[str]:
    legato = Legato()
    ids = []
    for pipeline, payload in jobs:
        spec = Pipeline.model_validate(pipeline) if isinstance(pipeline, dict) else pipeline
        ids.append(legato.submit(spec, payload))
    return ids


def wait(ids: list[str], seconds: float) -> dict[str, Any]:
    legato = Legato()
    deadline = time.monotonic() + seconds
    last: dict[str, Any] = {}
    done: set[str] = set()
    missing: dict[str, float] = {}
    while True:
        for run_id in ids:
            if run_id in done:
                continue
            try:
                record = legato.status(run_id)
                steps = legato.steps(run_id) if record.done else []
            except RunNotFound as exc:  # lost (no AOF?): give up on it after a grace period
                last[run_id] = {"record": None, "error": repr(exc)}
                missing.setdefault(run_id, time.monotonic())
                if time.monotonic() - missing[run_id] > MISSING_GRACE:
                    done.add(run_id)
                continue
            except Exception as exc:  # Redis restarting: try again
                last.setdefault(run_id, {"record": None, "error": repr(exc)})
                continue
            missing.pop(run_id, None)
            last[run_id] = {"record": record.model_dump(mode="json"),
                            "steps": [s.model_dump(mode="json") for s in steps]}
            if record.done:
                done.add(run_id)
        if len(done) == len(ids) or time.monotonic() > deadline:
            return last
        time.sleep(1)


def queues() -> dict[str, list[str]]:
    from legato.workers.app import app

    answers = app.control.inspect(timeout=5).active_queues() or {}
    return {node: sorted(q["name"] for q in qs) for node, qs in answers.items()}


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "submit":
        result: Any = submit(json.loads(args[0]))
    elif command == "wait":
        result = wait(json.loads(args[0]), float(args[1]))
    elif command == "queues":
        result = queues()
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
