"""The producer API: submit a job, wait for it, read its status and steps.

    from legato import Legato
    legato = Legato()                       # settings from LEGATO_* environment variables
    run_id = legato.submit("summarize", {"text": "..."})
    record = legato.wait(run_id, timeout=60)
    print(record.status, record.output)

A job input is checked against the pipeline's input schema before anything is written or sent;
so are its completion callbacks (`on_done`: pipeline/callbacks.py).
"""

from __future__ import annotations

import functools
import importlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from celery import Celery
from pydantic import ValidationError

from legato import callbacks, events, schema
from legato.admission import Admission, send
from legato.compile import Compiler
from legato.consumers import QueueWatch, first_queues
from legato.envelope import RESUMABLE, OnDone, RunRecord, StepRecord
from legato.errors import InputError, RunNotFound, SpecError, StepError
from legato.loader import check_children, find_pipeline, load_models, load_pipeline, resolve
from legato.search import RunQuery, find_runs
from legato.settings import Settings, get_settings
from legato.signals import SignalReply, send_signal
from legato.spec import Pipeline
from legato.store import RunStore
from legato.tags import check_tags
from legato.tenants import check_submit, load_policies
from legato.tools import load_tool_modules

AppFactory = Callable[[Settings], Celery]
# The Celery app a producer sends with, when it is given neither an app nor a factory: the worker
# wiring's factory, named by import path (as `celery -A` names an app) so the engine does not
# import the worker wiring, and only a producer that sends loads it.
DEFAULT_APP_FACTORY = "legato.workers.app:create_app"


def default_app_factory(settings: Settings) -> Celery:
    module, _, name = DEFAULT_APP_FACTORY.partition(":")
    factory: AppFactory = getattr(importlib.import_module(module), name)
    return factory(settings)


class Legato:
    def __init__(self, settings: Settings | None = None, *, app: Celery | None = None,
                 store: RunStore | None = None, app_factory: AppFactory | None = None) -> None:
        self.settings = settings or get_settings()
        self._app = app
        self._app_factory = app_factory or default_app_factory
        self.store = store or RunStore.from_url(self.settings.redis_url, self.settings.key_prefix,
                                                run_ttl=self.settings.run_ttl)
        if self.store.dispatch is None:  # a child run this producer ends resumes its parent
            self.store.dispatch = lambda signature: self.app.signature(signature).apply_async()
        load_tool_modules(self.settings.tool_modules)

    @property
    def app(self) -> Celery:
        """The Celery app runs are sent with: the one given, else made (once) by the factory from
        this client's settings. The producer needs it only to send."""
        if self._app is None:
            self._app = self._app_factory(self.settings)
        return self._app

    def load(self, pipeline: str | Pipeline) -> Pipeline:
        """A pipeline by name (from the pipelines directory), by file path, or as an object."""
        if isinstance(pipeline, Pipeline):
            models = {} if pipeline.models else load_models(self.settings.models_path)
            spec = resolve(pipeline, models, source=pipeline.name)
            check_children(spec, source=spec.name, pipelines_dir=self.settings.pipelines_dir,
                           models_file=self.settings.models_path, stack=(spec.name,))
            return spec
        return load_pipeline(pipeline, pipelines_dir=self.settings.pipelines_dir,
                             models_file=self.settings.models_path)

    def load_named(self, name: str) -> Pipeline:
        """A pipeline by name only, from the pipelines directory: what a producer over the wire
        (`legato.submit`) may ask for. A SpecError names the file by its name in the directory,
        never by a server path, and lists nothing that is there."""
        pipelines_dir, models_file = self.settings.pipelines_dir, self.settings.models_path
        path = find_pipeline(name, pipelines_dir, names_only=True)  # its error echoes the name
        try:
            return load_pipeline(str(path), pipelines_dir=pipelines_dir, models_file=models_file)
        except SpecError as exc:
            raise _without_server_paths(exc, path, models_file) from None

    def submit(self, pipeline: str | Pipeline, input: Any, *,
               idempotency_key: str | None = None, names_only: bool = False,
               on_done: OnDone | Mapping[str, Any] | None = None,
               schedule: str | None = None, tenant: str | None = None,
               priority: int | None = None, tags: Mapping[str, str] | None = None,
               watch: bool = False) -> str:
        """Validate, record and enqueue one run; return its id. Raises SpecError or InputError.

        `names_only`: `pipeline` is a name in the pipelines directory, never a file path (what
        `legato.submit` does for producers). `on_done`: whom to tell when the run finishes — a
        Celery task (and queue) and/or a webhook URL (pipeline/callbacks.py). `schedule`: the
        schedule that made the run (set by `legato beat`). `tenant` ("default") and `priority`
        (0; higher first within the tenant) matter with a tenants file: see legato.admission.
        `tags`: labels stored on the run and searched by (`runs(tags=...)`; limits in
        legato.tags). `watch`: the caller will follow the run (`stream`): it is marked watched
        before anything is enqueued, so with LEGATO_STREAM=watched its first step streams too."""
        tenant, priority = check_submit(tenant, priority)
        checked_tags = check_tags(tags)
        if names_only:
            spec = self.load_named(pipeline) if isinstance(pipeline, str) else \
                _refuse_object(pipeline)
        else:
            spec = self.load(pipeline)
        check_input(spec, input, max_bytes=self.settings.max_input_bytes)
        told = callbacks.check_on_done(on_done, hosts=self.settings.webhook_hosts)
        digest = self.store.put_spec(spec)
        record = RunRecord(id=uuid.uuid4().hex, pipeline=spec.name, spec_hash=digest,
                           status="queued", input=input, created_at=time.time(),
                           idempotency_key=idempotency_key, on_done=told, schedule=schedule,
                           tenant=tenant, priority=priority, tags=checked_tags)
        run_id = self.store.create_run(record)
        if run_id != record.id:  # the key was used before: that run is this job, if it is
            _same_job(self.store.get_run(run_id), spec.name, input, idempotency_key)
            return run_id
        if watch:
            self.store.mark_watched(run_id)
        if self.admission is not None:
            self._admit(run_id, tenant, priority)
            return run_id
        self.enqueue(spec, run_id, digest)
        return run_id

    def enqueue(self, spec: Pipeline, run_id: str, digest: str) -> None:
        """Compile and send a new run's canvas (its record is written: by `submit`, or by a
        `pipeline` step starting its child, legato.tasks.children); fail the run if the broker
        refuses it."""
        try:
            canvas = self._compiler(run_id, digest).run(spec)
            canvas.apply_async()
        except Exception as exc:
            callbacks.finish(self.store, self.app, run_id, "failed",
                             error=f"could not enqueue: {exc}")
            raise
        self._watch.note(run_id, first_queues(canvas))  # "waiting for a worker on queue X"

    @functools.cached_property
    def admission(self) -> Admission | None:
        """Admission by fair share, when this producer has a tenants file (LEGATO_TENANTS_FILE)."""
        path = self.settings.tenants_file
        if not path:
            return None
        return self.store.admission(load_policies(path))

    def _admit(self, run_id: str, tenant: str, priority: int) -> None:
        """Hold the run for its turn; send what that released (this run, or others')."""
        assert self.admission is not None
        try:
            admitted = self.admission.admit(run_id, tenant, priority)
        except Exception as exc:
            self.store.finish_run(run_id, "failed", error=f"could not enqueue: {exc}")
            raise
        if admitted.capped:
            self.store.finish_run(run_id, "failed", error=f"spend cap reached: {admitted.capped}")
            return
        self.send_released(admitted.released)

    def send_released(self, released: list[tuple[str, str]]) -> None:
        """Send runs that admission released (legato.admission.send)."""
        for run_id, canvas in send(self.app, self.store, released,
                                   batch_size=self.settings.batch_size).items():
            self._watch.note(run_id, first_queues(canvas))

    @functools.cached_property
    def _watch(self) -> QueueWatch:
        """Which queues have live workers, as this producer last read (cached: legato.consumers)."""
        return QueueWatch(self.store)

    def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        """Stop a run: steps not yet begun will not run. False if it had already finished."""
        self.store.get_run(run_id)  # RunNotFound for an unknown id
        cancelled = callbacks.finish(self.store, self.app, run_id, "cancelled", error=reason)
        if cancelled:
            self.store.waits.forget(run_id)  # its parked steps are never to be resumed
            if self.admission is not None:  # its slot, or its place in the queue
                self.send_released(self.admission.settle(run_id))
        return cancelled

    def signal(self, run_id: str, step: str, data: Any = None, *,
               by: str | None = None) -> SignalReply:
        """Signal the wait step `step` (id or path) of a run: `data` (checked against the
        step's schema) becomes its output, and the run goes on. Sent before the run reaches the
        step, the signal is kept until it does. Refused (SignalRefused, nothing changed): no
        such step, not a wait, a finished run, a payload off the schema, already signalled."""
        return send_signal(self.store, self.app, run_id, step, data, by=by)

    def resume(self, run_id: str) -> None:
        """Continue a failed or cancelled run: its completed steps are reused, the rest run.
        With a tenants file it waits for admission as a new run does (and is charged, when it
        ends, only for what it used since it last ended)."""
        run = self.store.get_run(run_id)  # RunNotFound for an unknown id
        admitted = self.admission is not None and run.parent_run is None
        state = self.store.reopen_run(run_id, allowed=tuple(sorted(RESUMABLE)),
                                      status="queued" if admitted else "running")
        if state == "missing":
            raise RunNotFound(f"no run {run_id!r}")
        if state != "ok":
            only = " or ".join(sorted(RESUMABLE, reverse=True))
            raise InputError(f"run {run_id} is {state}: only {only} runs resume")
        if admitted:
            self._admit(run_id, run.tenant, run.priority)  # waits its turn, as a new run does
            return
        self._compiler(run_id, run.spec_hash).run(self.store.get_spec(run.spec_hash)).apply_async()

    def _compiler(self, run_id: str, digest: str) -> Compiler:
        return Compiler(self.app, run_id, digest, batch_size=self.settings.batch_size)

    def unserved_queues(self, pipeline: str | Pipeline) -> dict[str, list[str]]:
        """The queues a run of `pipeline` may send to that no live worker consumes now, with the
        steps that would wait there."""
        spec = self.load(pipeline)
        wanted = Compiler(self.app, "-", "-", fuse=spec.fuse).queues(spec)
        served = self.store.served(sorted(wanted), now=time.time())
        return {q: paths for q, paths in sorted(wanted.items()) if not served[q]}

    def status(self, run_id: str) -> RunRecord:
        return self.store.get_run(run_id)

    def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        return self.store.wait(run_id, timeout)

    def result(self, run_id: str, timeout: float | None = None) -> Any:
        """Wait for the run and return its output; raise StepError if it did not succeed."""
        record = self.wait(run_id, timeout)
        if record.status != "succeeded":
            raise StepError(f"run {run_id} {record.status}: {record.error}")
        return record.output

    def stream(self, run_id: str, last_id: str | None = None, *,
               follow: bool = True) -> Iterator[events.Event]:
        """The run's events (legato.events), from after `last_id` (the start if None), as they
        come; ends with the run (a `RunFinished` event). `follow=False`: what is there now."""
        self.store.get_run(run_id)  # RunNotFound for an unknown id
        if last_id is not None and not events.is_entry_id(last_id):
            raise InputError(f"last_id: {last_id!r} is not an event id of run {run_id} "
                             "(ids look like 1764590000000-0)")
        return self.store.events(run_id, last_id=last_id, follow=follow)

    def steps(self, run_id: str) -> list[StepRecord]:
        return self.store.get_steps(run_id)

    def runs(self, *, status: str | None = None, limit: int = 20, pipeline: str | None = None,
             tags: Mapping[str, str] | None = None, since: float | None = None,
             until: float | None = None, text: str | None = None, schedule: str | None = None,
             tenant: str | None = None) -> list[RunRecord]:
        """Runs, newest first: in a state, of a pipeline, with all these tags, created in
        [since, until), holding `text` in their input, output or error (legato.search), made by
        a schedule, of a tenant."""
        if pipeline is None and not tags and since is None and until is None and not text:
            return self.store.list_runs(status=status, schedule=schedule, tenant=tenant,
                                        limit=limit)
        query = RunQuery(status=status, limit=limit, pipeline=pipeline, tags=dict(tags or {}),
                         since=since, until=until, text=text, schedule=schedule, tenant=tenant)
        return find_runs(self.store, query).runs


def check_input(spec: Pipeline, value: Any, *, max_bytes: int | None = None) -> None:
    """Refuse (InputError) an input that misses the schema or whose JSON exceeds max_bytes."""
    if max_bytes is not None:
        try:
            size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
        except (TypeError, ValueError) as exc:
            raise InputError(f"input for pipeline {spec.name!r} is not JSON: {exc}") from None
        if size > max_bytes:
            raise InputError(f"input for pipeline {spec.name!r} refused: {size} bytes of JSON, "
                             f"over the limit of {max_bytes} (LEGATO_MAX_INPUT_BYTES)")
    try:
        schema.validate(spec.input_schema, value)
    except ValidationError as exc:
        raise InputError(f"input for pipeline {spec.name!r} refused: "
                         f"{schema.describe(exc)}") from None


def _without_server_paths(exc: SpecError, path: Path, models_file: Path) -> SpecError:
    """The same error, its file named by base name: "summarize.yaml" (or a child pipeline's,
    beside it), "models file"."""
    source = exc.source
    if source in (str(models_file), str(models_file.resolve())):
        source = "models file"
    elif source == str(path) or Path(source).parent == path.parent:  # it, or a child beside it
        source = Path(source).name
    elif "/" in source or "\\" in source:
        source = "pipeline"  # some other file: not named
    return SpecError(exc.reason, source=source, path=exc.path)


def _refuse_object(pipeline: Any) -> Pipeline:
    raise SpecError("a pipeline is named, not sent", source=type(pipeline).__name__)


def _same_job(first: RunRecord, pipeline: str, input: Any, key: str | None) -> None:
    """An idempotency key is bound to the job it was first used for: the pipeline and the input.
    Another job under it is refused (InputError) rather than answered with the first run."""
    def canonical(value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    if first.pipeline != pipeline:
        raise InputError(f"idempotency key {key!r} was used for another pipeline: run "
                         f"{first.id} of {first.pipeline!r}")
    if canonical(first.input) != canonical(input):
        raise InputError(f"idempotency key {key!r} was used for another input: run {first.id}")
