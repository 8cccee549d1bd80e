"""Keeping steps alive and bringing dead ones back.

- `LeaseKeeper` (one per process that runs tasks): renews the leases of the steps in flight in
  this process, every `heartbeat_seconds`, in one round trip.
- `Sweeper` (one per worker): dispatches again the steps whose lease expired — their worker died —
  with the same task id, chain and chord membership (claims are atomic, so several sweepers never
  dispatch one step twice);
  and recovers unfinished runs with no sign of life for `stall_seconds` (a message lost before
  its step began), by sending the run's canvas again: completed steps are memoized, so only the
  missing work runs. After `max_recoveries` such attempts the run fails as stalled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from legato.compile import Compiler
from legato.envelope import RunRecord
from legato.errors import RunNotFound
from legato.keys import split_member
from legato.settings import Settings
from legato.signals import send_timeout
from legato.store import RunStore

log = logging.getLogger("legato.lifeline")


class _Loop:
    """A daemon thread calling `tick` every `every` seconds until stopped."""

    def __init__(self, name: str, every: float) -> None:
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.tick()
            except Exception:  # Redis down for a moment: try again next time
                log.warning("%s failed; retrying in %.1fs", self._thread.name, self.every,
                            exc_info=True)

    def tick(self) -> None:
        raise NotImplementedError


class LeaseKeeper(_Loop):
    def __init__(self, store: RunStore, settings: Settings) -> None:
        super().__init__("legato-heartbeat", settings.heartbeat_seconds)
        self.store = store
        self.lease_seconds = settings.lease_seconds
        self._held: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def hold(self, run_id: str, path: str, token: str) -> None:
        with self._lock:
            self._held[(run_id, path)] = token

    def release(self, run_id: str, path: str) -> None:
        with self._lock:
            self._held.pop((run_id, path), None)

    def tick(self) -> None:
        with self._lock:
            held = [(run_id, path, token) for (run_id, path), token in self._held.items()]
        self.store.journal.renew(held, now=time.time(), lease_seconds=self.lease_seconds)


class Sweeper(_Loop):
    """Also advertises the queues its worker consumes (`queues()`, read each pass so a consumer
    added or cancelled at run time shows), and fails runs that waited too long for a worker on a
    queue nobody serves."""

    def __init__(self, store: RunStore, app: Celery, settings: Settings, *,
                 worker: str = "", queues: Callable[[], list[str]] = list) -> None:
        super().__init__("legato-sweeper", settings.sweep_seconds)
        self.store = store
        self.app = app
        self.settings = settings
        self.worker = worker
        self.queues = queues
        self._advertised: list[str] = []
        self._pruned_at = 0.0

    def tick(self) -> None:
        self.sweep()

    def start(self) -> None:
        try:  # at once, not a pass later: a step may be sent to these queues right away
            self._advertise()
        except Exception:
            log.warning("could not advertise this worker's queues yet", exc_info=True)
        super().start()

    def stop(self) -> None:
        super().stop()
        if self.worker and self._advertised:
            self.store.withdraw(self.worker, self._advertised)

    def sweep(self) -> dict[str, int]:
        """One pass; returns what it did."""
        self._advertise()
        done = {"redispatched": self._redispatch(), "recovered": 0, "failed": 0, "finished": 0,
                "unserved": self._unserved(), "timed_out": self._timeouts(),
                "resumed": self._resumes(), "waiting": 0}
        for run_id in self.store.claim_stalled(quiet_for=self.settings.stall_seconds):
            done[self._recover(run_id)] += 1
        done["pruned"] = self._prune()
        return done

    def _prune(self) -> int:
        """Every LEGATO_PRUNE_SECONDS (60): drop what retention left behind (finished runs' keys
        expire by themselves after LEGATO_RUN_TTL; their entries in the runs index do not)."""
        now = time.time()
        if not self.settings.run_ttl or now - self._pruned_at < self.settings.prune_seconds:
            return 0
        self._pruned_at = now
        return self.store.prune(older_than=self.settings.run_ttl, now=now)

    def _advertise(self) -> None:
        if not self.worker:
            return
        queues = sorted(self.queues())
        gone = sorted(set(self._advertised) - set(queues))
        if gone:
            self.store.withdraw(self.worker, gone)
        # Three passes' worth: a worker that stops sweeping drops out within that.
        self.store.advertise(self.worker, queues, now=time.time(),
                             ttl=3 * self.settings.sweep_seconds + 1)
        self._advertised = queues

    def _unserved(self) -> int:
        """Clear the runs whose queue has a worker now; fail those that waited too long."""
        waiting = self.store.waiting_runs()
        if not waiting:
            return 0
        failed, now = 0, time.time()
        runs = {run_id: self._record(run_id) for run_id, _ in waiting}
        queues = sorted({r.waiting_for for r in runs.values() if r and r.waiting_for})
        served = self.store.served(queues, now=now) if queues else {}
        for run_id, since in waiting:
            run = runs[run_id]
            if run is None or run.done or not run.waiting_for or served.get(run.waiting_for):
                self.store.clear_waiting(run_id)
            elif now - since >= self.settings.unserved_seconds:
                self.store.finish_run(run_id, "failed", error=(
                    f"no worker serves queue {run.waiting_for} (waited "
                    f"{int(now - since)}s; start one with -Q {run.waiting_for})"))
                self.store.clear_waiting(run_id)
                failed += 1
        return failed

    def _record(self, run_id: str) -> RunRecord | None:
        try:
            return self.store.get_run(run_id)
        except RunNotFound:
            return None

    def _redispatch(self) -> int:
        claimed = self.store.journal.claim_expired(
            now=time.time(), grace_seconds=max(60.0, 4 * self.settings.lease_seconds))
        sent: set[str] = set()
        for member, signature in claimed:
            run_id, path = split_member(member)
            log.warning("step %s of run %s lost its worker: dispatching it again", path, run_id)
            task_id = signature.get("options", {}).get("task_id")
            if task_id is not None and task_id in sent:
                continue  # a batch's members share its task: send it once
            sent.add(task_id)
            self.app.signature(signature).apply_async()
            self.store.bump(run_id, "redispatches")
        return len(claimed)

    def _timeouts(self) -> int:
        """End the waits whose timeout passed, through the same atomic claim as a signal."""
        fired = 0
        for run_id, path in self.store.waits.claim_deadlines(
                now=time.time(), retry_in=max(30.0, 2 * self.settings.sweep_seconds)):
            if send_timeout(self.store, self.app, run_id, path) is not None:
                fired += 1
        return fired

    def _resumes(self) -> int:
        """Send again the parked steps that were signalled but whose sender died before it
        confirmed the send (a second delivery is harmless: the journal memo)."""
        claimed = self.store.waits.claim_resumes(
            now=time.time(), grace_seconds=self.settings.resume_grace_seconds)
        for run_id, path, signature in claimed:
            log.warning("step %s of run %s was signalled but not resumed: sending it", path,
                        run_id)
            self.app.signature(signature).apply_async()
            self.store.waits.confirm(run_id, path)
        return len(claimed)

    def _recover(self, run_id: str) -> str:
        try:
            run = self.store.get_run(run_id)
        except Exception:
            self.store.forget_active(run_id)
            return "failed"
        if run.done:  # it reached a terminal state (envelope.TERMINAL) since it was claimed
            return "finished"
        if run.status == "waiting":  # parked for a signal: quiet on purpose (legato.waits)
            self.store.forget_active(run_id)
            return "waiting"
        if self.store.bump(run_id, "recoveries") > self.settings.max_recoveries:
            quiet = int(self.settings.stall_seconds)
            why = f" ({run.waiting})" if run.waiting else ""
            self.store.finish_run(run_id, "failed",
                                  error=f"stalled: no step made progress for {quiet}s{why}")
            return "failed"
        log.warning("run %s shows no sign of life: sending it again", run_id)
        spec = self.store.get_spec(run.spec_hash)
        Compiler(self.app, run_id, run.spec_hash,
                 batch_size=self.settings.batch_size).run(spec).apply_async()
        return "recovered"


def keeper(store: RunStore, settings: Settings) -> LeaseKeeper:
    """This process's lease keeper (its runtime's), started on first use (works for every pool).
    `store` and `settings` are the runtime's own: kept for the callers that pass them."""
    from legato.workers import runtime

    return runtime.current().keeper()


def signature_json(task: Any) -> dict[str, Any]:
    """The running task's own signature — same id, chain and chord — as plain JSON data."""
    return dict(task.signature_from_request())
