"""The runtime: one object per process holding everything the process shares.

Settings, the Redis client and run store (with the ballot), the sync HTTP client, the model
transport and the gateway over it, the batch threads, the tool threads and HTTP tools' client (a
`Toolbox`), the lease keeper and — in a worker's main process — the sweeper; and the producer
client the `legato.submit` task uses. Each is made on first use and shared by every task and
thread of the process (arq's `on_startup` context, as one object).

Lifecycle (workers/app.py connects the signals):
- made at worker start (`worker_init`: from the app's own settings) and in each prefork child
  (`worker_process_init`); in any other process (a producer, a test) on first `current()`;
- closed at worker shutdown (`worker_shutdown`, `worker_process_shutdown`): threads stopped, the
  loop transport, the HTTP clients and the Redis pool closed;
- after a fork the child drops its parent's (`os.register_at_fork`: their threads did not come
  along and their sockets are the parent's) and makes its own, from the same settings.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx

from legato import bridge
from legato.admission import Admission
from legato.concurrency import ConcurrencyKeys
from legato.consumers import QueueWatch
from legato.keys import Keys
from legato.models import Gateway, RunScope
from legato.models.credentials import Credentials
from legato.models.transport import HttpxTransport, LoopTransport, Transport
from legato.publisher import Publisher
from legato.settings import Settings, get_settings
from legato.spec import Pipeline
from legato.store import RunStore, connect
from legato.tenants import load_policies
from legato.tools import toolbox
from legato.tools.toolbox import Toolbox
from legato.voting import Ballot
from legato.workers.lifeline import LeaseKeeper, Sweeper

if TYPE_CHECKING:
    from celery import Celery

    from legato.client import Legato


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()  # the process that made it: only it may close what it holds
        self.tools = Toolbox(hosts=settings.http_tool_hosts, mcp_file=settings.mcp_path)
        self._lock = threading.RLock()
        self._redis: Any = None
        self._store: RunStore | None = None
        self._http: httpx.Client | None = None
        self._transport: Transport | None = None
        self._gateway: Gateway | None = None
        self._publisher: Publisher | None = None
        self._batch_pool: ThreadPoolExecutor | None = None
        self._keeper: LeaseKeeper | None = None
        self._sweeper: Sweeper | None = None
        self._client: Legato | None = None
        self._queue_watch: QueueWatch | None = None
        self._admission: Admission | None = None
        self._concurrency: ConcurrencyKeys | None = None
        self._tenants: dict[str, str] = {}  # run id -> tenant, for tenants' rate limits

    # -- Redis -----------------------------------------------------------------------------------

    def redis(self) -> Any:
        """The process's Redis client (one blocking pool; retries through outages)."""
        if self._redis is not None:  # made: no lock on the hot path
            return self._redis
        with self._lock:
            if self._redis is None:
                self._redis = connect(self.settings.redis_url)
            return self._redis

    def store(self) -> RunStore:
        if self._store is not None:  # made: no lock on the hot path
            return self._store
        with self._lock:
            if self._store is None:
                s = self.settings  # callbacks held for about a lease (callbacks.py)
                self._store = RunStore(self.redis(), s.key_prefix, run_ttl=s.run_ttl,
                                       callback_hold=2 * s.lease_seconds)
                self._store.dispatch = _dispatch  # a child run's end resumes its parent
            return self._store

    def ballot(self) -> Ballot:
        """Vote tallies for quorum votes (over the store's Redis client)."""
        return self.store().ballot

    def run_scope(self, run_id: str, spec: Pipeline) -> RunScope:
        """What the gateway needs of a run: its budget (and when it began), its cache mode."""
        started = None
        if spec.budget is not None and spec.budget.deadline_seconds is not None:
            started = self.store().get_run(run_id).created_at
        admission = self.admission()
        if admission is None or not admission.policies.has_limits:
            return RunScope(run_id, spec.budget, spec.cache, started)
        tenant = self._tenant_of(run_id)
        return RunScope(run_id, spec.budget, spec.cache, started, tenant=tenant,
                        limits=admission.policies.rate_limits(tenant))

    def _tenant_of(self, run_id: str) -> str:
        """A run's tenant (it never changes: read once per run and process, kept a while)."""
        tenant = self._tenants.get(run_id)
        if tenant is None:
            tenant = self.store().tenant_of(run_id)
            if len(self._tenants) >= 10_000:
                self._tenants.clear()
            self._tenants[run_id] = tenant
        return tenant

    def admission(self) -> Admission | None:
        """Admission by fair share (legato.admission), when there is a tenants file."""
        if self._admission is not None or not self.settings.tenants_file:
            return self._admission
        with self._lock:
            if self._admission is None:
                self._admission = self.store().admission(
                    load_policies(self.settings.tenants_file))
            return self._admission

    def concurrency(self) -> ConcurrencyKeys:
        """Concurrency keys' slots (legato.concurrency)."""
        if self._concurrency is not None:  # made: no lock on the hot path
            return self._concurrency
        with self._lock:
            if self._concurrency is None:
                self._concurrency = self.store().concurrency_keys()
            return self._concurrency

    # -- model calls -----------------------------------------------------------------------------

    def http(self) -> httpx.Client:
        """The process's sync HTTP client (the model transport if LEGATO_MODEL_TRANSPORT=httpx)."""
        if self._http is not None:  # made: no lock on the hot path
            return self._http
        with self._lock:
            if self._http is None:
                s = self.settings
                limits = httpx.Limits(max_connections=s.http_max_connections,
                                      max_keepalive_connections=s.http_max_connections)
                self._http = httpx.Client(timeout=s.http_timeout, limits=limits)
            return self._http

    def transport(self) -> Transport:
        """The process's model transport: every model call in the process goes through it.

        LEGATO_MODEL_TRANSPORT=aiohttp (default): one event-loop thread with one aiohttp session,
        calling threads parked on futures; =httpx: the shared sync client `http()`.
        """
        if self._transport is not None:  # made: no lock on the hot path
            return self._transport
        with self._lock:
            if self._transport is None:
                s = self.settings
                self._transport = (HttpxTransport(self.http()) if s.model_transport == "httpx"
                                   else LoopTransport(s.http_max_connections, s.http_timeout))
            return self._transport

    def steps_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop chain segments' steps run on (legato.bridge): the transport's, unless
        it has none or LEGATO_STEPS_ON_LOOP is off (None)."""
        transport = self.transport()
        if self.settings.steps_on_loop and isinstance(transport, LoopTransport):
            return transport.loop
        return None

    def gateway(self) -> Gateway:
        """The process's model gateway: every model call's policies, over the transport and
        Redis."""
        if self._gateway is not None:  # made: no lock on the hot path
            return self._gateway
        with self._lock:
            if self._gateway is None:
                s = self.settings  # which endpoint gets which key: this worker's models file
                policy = Credentials.from_file(s.models_path, adhoc=s.model_endpoints == "any")
                self._gateway = Gateway(self.transport(), self.redis(), s.key_prefix,
                                        default_cache=s.cache, credentials=policy,
                                        sleep=bridge.sleep)
            return self._gateway

    def publisher(self) -> Publisher | None:
        """The process's writer of run events (pipeline/publisher.py); None with streaming off."""
        if self._publisher is not None or self.settings.stream == "off":  # no lock on the hot path
            return self._publisher
        with self._lock:
            if self._publisher is None:
                s = self.settings
                self._publisher = Publisher(self.redis(), Keys(s.key_prefix),
                                            maxlen=s.stream_maxlen,
                                            flush_seconds=s.stream_flush_ms / 1000)
            return self._publisher

    # -- threads ---------------------------------------------------------------------------------

    def batch_pool(self) -> ThreadPoolExecutor:
        """The threads a batch task runs its members on (LEGATO_BATCH_CONCURRENCY): their model
        calls wait on the transport's event loop, so a thread costs little."""
        if self._batch_pool is not None:  # made: no lock on the hot path
            return self._batch_pool
        with self._lock:
            if self._batch_pool is None:
                self._batch_pool = ThreadPoolExecutor(self.settings.batch_concurrency,
                                                      thread_name_prefix="legato-batch")
            return self._batch_pool

    def keeper(self) -> LeaseKeeper:
        """This process's lease keeper, started on first use (works for every pool)."""
        if self._keeper is not None:  # made: no lock on the hot path
            return self._keeper
        with self._lock:
            if self._keeper is None:
                self._keeper = LeaseKeeper(self.store(), self.settings)
                self._keeper.start()
            return self._keeper

    def start_sweeper(self, app: Celery, *, worker: str = "",
                      queues: Callable[[], list[str]] = list) -> Sweeper:
        """The worker's sweeper (one per worker, in its main process), started once; it also
        advertises `queues()` as consumed by `worker`."""
        if self._sweeper is not None:  # made: no lock on the hot path
            return self._sweeper
        with self._lock:
            if self._sweeper is None:
                self._sweeper = Sweeper(self.store(), app, self.settings, worker=worker,
                                        queues=queues, admission=self.admission())
                self._sweeper.start()
            return self._sweeper

    def queue_watch(self) -> QueueWatch:
        """Which queues have live consumers, as this process last read (workers/unserved.py)."""
        if self._queue_watch is not None:  # made: no lock on the hot path
            return self._queue_watch
        with self._lock:
            if self._queue_watch is None:
                self._queue_watch = QueueWatch(self.store())
            return self._queue_watch

    # -- producing -------------------------------------------------------------------------------

    def client(self, app: Celery) -> Legato:
        """A producer over this runtime's store, sending with `app` (the `legato.submit` task's)."""
        from legato.client import Legato

        if self._client is not None:  # made: no lock on the hot path
            return self._client
        with self._lock:
            if self._client is None:
                self._client = Legato(self.settings, app=app, store=self.store())
            return self._client

    # -- the end ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the threads, close the transport, the HTTP clients and the Redis pool. Only the
        process that made the runtime closes it; another (a forked child) only drops it."""
        with self._lock:
            sweeper, keeper, self._sweeper, self._keeper = self._sweeper, self._keeper, None, None
            transport, self._transport, self._gateway = self._transport, None, None
            publisher, self._publisher = self._publisher, None
            client, self._http = self._http, None
            pool, self._batch_pool = self._batch_pool, None
            redis, self._redis, self._store, self._client = self._redis, None, None, None
        if os.getpid() != self.pid:
            return
        for loop in (sweeper, keeper):
            if loop is not None:
                loop.stop()
        if publisher is not None:
            publisher.close()  # what is buffered, written while Redis is still open
        if isinstance(transport, LoopTransport):
            transport.close()
        if client is not None:
            client.close()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self.tools.close()
        if redis is not None:
            redis.connection_pool.disconnect()


_runtime: Runtime | None = None
_settings: Settings | None = None  # what this process's runtime is made from (start() sets it)
_lock = threading.Lock()


def current() -> Runtime:
    """This process's runtime, made on first use (from `start()`'s settings, else the
    environment's)."""
    global _runtime
    runtime = _runtime
    if runtime is not None:  # no pid check on this hot path: a fork drops it (_forget_inherited)
        return runtime
    with _lock:
        if _runtime is None or _runtime.pid != os.getpid():
            _runtime = Runtime(_settings or get_settings())
            toolbox.install(_runtime.tools)
        return _runtime


def started() -> bool:
    """Whether a worker made this process's runtime (`start()`, kept in its forked children);
    False in a producer, whose client holds its own store."""
    return _settings is not None


def start(settings: Settings) -> Runtime:
    """Make the process's runtime from `settings` (closing one made before). A child forked
    later makes its own from the same settings."""
    global _settings
    reset()
    _settings = settings
    return current()


def reset() -> None:
    """Close the process's runtime (a forked child's inherited one is only dropped) and forget
    `start()`'s settings; the next `current()` makes a new one from the environment's."""
    global _runtime, _settings
    with _lock:
        old, _runtime, _settings = _runtime, None, None
        toolbox.install(None)
    if old is not None:
        old.close()


def _forget_inherited() -> None:
    """In a forked child: the parent's runtime is not ours (nor its lock's state); its settings
    are, and the child's runtime is made from them."""
    global _runtime, _lock
    _lock = threading.Lock()
    _runtime = None
    toolbox.install(None)


os.register_at_fork(after_in_child=_forget_inherited)


def _dispatch(signature: dict[str, Any]) -> None:
    """Send a task signature with the worker's app (a parked step resumed)."""
    from legato.workers.app import app

    app.signature(signature).apply_async()
