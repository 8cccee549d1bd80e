"""Pipeline -> Celery canvas: the compiler's shared parts; each kind's shape is its own
(`Kind.compile` in legato.kinds.*).

    llm, tool     one task on its queue
    chain         celery.chain of its steps; consecutive llm steps on one queue are one
                  `legato.segment` task (each step still journaled), unless `fuse: false`
    run           the pipeline's steps as a chain, then `legato.finalize` — folded into the
                  last segment when the pipeline ends with llm steps
    route         a router task, which replaces itself with the chosen branch (on its queue)
    parallel      chord(group(sections or votes), aggregate); a vote's members go
                  `LEGATO_BATCH_SIZE` to a `legato.llm_batch` task (unless it has a quorum)
    orchestrate   a plan task, which replaces itself with chord(group(work...), synthesize);
                  the workers go in `legato.llm_batch` tasks like a vote's members
    evaluate      an evaluate task per round, each replacing itself with the next round
    agent         an agent task per turn, likewise

A step's queue is its own `queue`, else the nearest enclosing step's, else its kind's default.
Messages carry a `StepInput` (run id, spec hash, step path) and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from celery import Celery, chord, group
from celery.canvas import Signature, _chain

from legato import paths, tree
from legato.envelope import StepInput, step_of
from legato.kinds import kind_of
from legato.kinds.llm import Llm
from legato.kinds.orchestrate import Orchestrate, workers
from legato.kinds.route import Route
from legato.kinds.wait import jump_targets
from legato.queues import CONTROL, DEFAULT_QUEUES, LLM, TOOLS
from legato.settings import get_settings
from legato.spec import Pipeline, Step

__all__ = ["CONTROL", "DEFAULT_QUEUES", "LLM", "TOOLS", "Compiler"]


class Compiler:
    def __init__(self, app: Celery, run_id: str, spec_hash: str, *, fuse: bool = True,
                 batch_size: int | None = None) -> None:
        self.app = app
        self.run_id = run_id
        self.spec_hash = spec_hash
        self.fuse = fuse  # the pipeline's `fuse`
        self.batch_size = batch_size  # None: the process's settings' (LEGATO_BATCH_SIZE)

    def envelope(self, node: str, *, path: str | None = None, index: int | None = None,
                 item: Any = None, quorum: int | None = None) -> dict[str, Any]:
        envelope = StepInput(run_id=self.run_id, spec_hash=self.spec_hash, node=node,
                             path=path or node, index=index, item=item, quorum=quorum)
        return envelope.model_dump(mode="json", exclude_none=True)

    def task(self, name: str, queue: str, node: str, *, path: str | None = None,
             index: int | None = None, item: Any = None,
             quorum: int | None = None) -> Signature:
        step = self.envelope(node, path=path, index=index, item=item, quorum=quorum)
        return self.signature(name, {"step": step}, queue)

    def signature(self, name: str, kwargs: dict[str, Any], queue: str | None) -> Signature:
        """A step task's signature. Its `kwargsrepr` (what Flower and task events show for the
        kwargs) says the run and step, `run=<id> step=<path>`: Celery's own, a size-capped repr
        of every envelope, costs ~75 µs a message and says less."""
        found = step_of(kwargs)
        shown = {"kwargsrepr": f"run={found[0]} step={found[1]}"} if found else {}
        return self.app.signature(name, kwargs=kwargs, queue=queue, **shown)

    def run(self, pipeline: Pipeline) -> Signature:
        """What to send to start a run: its first stage (`stage`)."""
        return self.stage(pipeline, 0)

    def stage(self, pipeline: Pipeline, at: int) -> Signature:
        """The run's stage `at`: one top-level step's canvas, a fused segment, or the closing
        `legato.finalize`. A run is sent one stage at a time: the stage's last task carries
        `then: {at: <next>}`, and the step-task base compiles that stage when it runs
        (tasks/base.py), so no message or stored signature holds the rest of the run."""
        groups = self.plan(pipeline)
        sig = self._build(groups[at])
        if at + 1 < len(groups):
            last_task(sig).kwargs["then"] = {"at": at + 1}
        return sig

    def stages(self, pipeline: Pipeline) -> list[Signature]:
        """Every stage of a run, in order (sent one at a time; for tools and tests)."""
        return [self.stage(pipeline, i) for i in range(len(self.plan(pipeline)))]

    def stage_of(self, pipeline: Pipeline, step_id: str) -> int | None:
        """The stage that starts with the top-level step `step_id` (a wait's jump target)."""
        for i, g in enumerate(self.plan(pipeline)):
            if g.paths and g.paths[0] == step_id:
                return i
        return None

    def plan(self, pipeline: Pipeline) -> list[Group]:
        """The run's stages, cached per pinned spec (a pipeline object, held while cached)."""
        self.fuse = pipeline.fuse
        key = (id(pipeline), self.fuse)
        cached = _PLANS.get(key)
        if cached is not None and cached[0] is pipeline:
            return cached[1]
        groups = self._groups(pipeline.steps, "", None, last=True)
        if groups[-1].kind == "segment":
            groups[-1] = Group("segment", groups[-1].paths, groups[-1].queue, finalize=True)
        else:
            groups.append(Group("finalize", (), CONTROL))
        if len(_PLANS) >= _PLANS_KEPT:
            _PLANS.clear()
        _PLANS[key] = (pipeline, groups)
        return groups

    def sequence(self, steps: list[Step], prefix: str, queue: str | None, *,
                 last: bool = False) -> list[Signature]:
        """Signatures for steps run in order (see `_groups`)."""
        return [self._build(g) for g in self._groups(steps, prefix, queue, last=last)]

    def _groups(self, steps: list[Step], prefix: str, queue: str | None, *,
                last: bool = False) -> list[Group]:
        """Steps run in order, grouped into tasks. Consecutive llm steps on one queue become
        one segment; a lone llm step stays a plain task, unless it ends the run (`last`), where
        a segment of one also closes the run."""
        out: list[Group] = []
        run: list[str] = []  # paths of the llm steps being fused
        run_queue = ""

        def flush(ending: bool = False) -> None:
            if len(run) > 1 or (run and ending):
                out.append(Group("segment", tuple(run), run_queue))
            elif run:
                out.append(Group("llm", (run[0],), run_queue))
            run.clear()

        targets = jump_targets(steps)  # a wait's timeout may jump there: it starts a task
        for s in steps:
            path = paths.child(prefix, s.id)
            if s.id in targets:
                flush()
            if isinstance(s, Llm) and self.fuse and s.concurrency is None:
                q = tree.inherit_queue(s, queue) or LLM
                if run and q != run_queue:
                    flush()
                run.append(path)
                run_queue = q
                continue
            flush()
            out.append(Group("step", (path,), queue, step=s))
        flush(ending=last)
        return out

    def _build(self, group: Group) -> Signature:
        if group.kind == "segment":
            kwargs: dict[str, Any] = {"steps": [self.envelope(p) for p in group.paths]}
            if group.finalize:
                kwargs["finalize"] = True
            return self.signature("legato.segment", kwargs, group.queue)
        if group.kind == "llm":
            return self.task("legato.llm", group.queue or LLM, group.paths[0])
        if group.kind == "finalize":
            return self.signature(
                "legato.finalize", {"run_id": self.run_id, "spec_hash": self.spec_hash}, CONTROL)
        assert group.step is not None
        return self.step(group.step, group.paths[0], group.queue)

    def step(self, step: Step, path: str, queue: str | None = None) -> Signature:
        """The canvas of one step at `path`, inside a step on `queue` (None at the top)."""
        return kind_of(step).compile(step, path, tree.inherit_queue(step, queue), self)

    def queues(self, pipeline: Pipeline) -> dict[str, list[str]]:
        """Every queue a run of `pipeline` may send a task to, with the step paths sent there
        (a route's every branch included)."""
        found: dict[str, list[str]] = {}
        for visit in tree.walk(pipeline.steps):
            for queue in _queues_in(self.step(visit.step, visit.path, visit.queue)):
                paths_there = found.setdefault(queue, [])
                if visit.path not in paths_there:
                    paths_there.append(visit.path)
        if self.plan(pipeline)[-1].kind == "finalize":
            found.setdefault(CONTROL, [])  # legato.finalize
        return found

    def members(self, envelopes: list[dict[str, Any]], queue: str) -> list[Signature]:
        """Fan-out members as `legato.llm_batch` tasks of LEGATO_BATCH_SIZE (a task each when
        the pipeline says `fuse: false`)."""
        if not self.fuse:
            return [self.signature("legato.llm", {"step": e}, queue) for e in envelopes]
        size = max(1, self.batch_size or get_settings().batch_size)
        return [self.signature("legato.llm_batch", {"steps": envelopes[i:i + size]}, queue)
                for i in range(0, len(envelopes), size)]

    def again(self, name: str, envelope: StepInput, request: Any) -> Signature:
        """The next round of a loop task, on the queue this one came from."""
        queue = (request.delivery_info or {}).get("routing_key") or LLM
        return self.signature(name, {"step": envelope.model_dump(mode="json", exclude_none=True)},
                              queue)

    def branch(self, route: Route, path: str, name: str, queue: str | None) -> Signature:
        """The chosen branch of a route, on the branch's queue (else the route's, inherited)."""
        branch = route.branches[name]
        return self.step(branch, paths.child(path, branch.id), queue)

    def workers(self, step: Orchestrate, path: str, subtasks: list[Any], queue: str | None, *,
                start: int = 0, round_no: int = 0) -> Signature:
        """The orchestrator's workers, then its synthesizer (legato.kinds.orchestrate)."""
        return workers(step, path, subtasks, queue, self, start=start, round_no=round_no)


@dataclass(frozen=True)
class Group:
    """One task of a sequence, before it is built: a segment of llm steps, a lone llm step,
    another step's canvas, or the run's `legato.finalize`. At the top, one is a stage."""

    kind: Literal["segment", "llm", "step", "finalize"]
    paths: tuple[str, ...]
    queue: str | None
    step: Step | None = None
    finalize: bool = False  # a segment that ends the run closes it


# Stage plans of the specs this process has compiled (pinned specs live as long as the process).
_PLANS: dict[tuple[int, bool], tuple[Pipeline, list[Group]]] = {}
_PLANS_KEPT = 256


def last_task(sig: Any) -> Signature:
    """The task that ends a canvas: a chain's last, a chord's body's."""
    if isinstance(sig, _chain):
        return last_task(sig.tasks[-1])
    if isinstance(sig, chord):
        return last_task(sig.body)
    if isinstance(sig, group):
        raise TypeError("a stage cannot end with a bare group")
    return sig


def _queues_in(sig: Any) -> set[str]:
    """The queues of every task in a canvas."""
    inner = [*getattr(sig, "tasks", ()), *([sig.body] if getattr(sig, "body", None) else [])]
    if inner:
        return set().union(*(_queues_in(s) for s in inner))
    queue = sig.options.get("queue")
    return {queue} if queue else set()
