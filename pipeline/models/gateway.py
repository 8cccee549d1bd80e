"""The gateway: one per worker process, every model call goes through it.

A call is a small pipeline of named policies around one wire request::

    cache → budget.check → for each model in [alias, *fallbacks]:
        breaker.allow → ratelimit.acquire → retry(post) → breaker / ratelimit / budget bookkeeping

Whether an error is retried is decided by its type: TransientError is retried under the model's
policy (`retry.for_model`) and then falls back to the next model; PermanentError, OutputInvalid
and BudgetExceeded go straight up. An open circuit sends calls past a model, never into a failure:
when every model's circuit is open the alias itself is called under its retry policy, so a short
outage without fallbacks costs waits, not failed runs. Every attempt, its cause and the wait after
it go into `trace` as `ModelAttempt`s, which the step record keeps as `detail.model_calls`.
Messages are checked (`Message`) on the way in; the step a call is for is a `StepRef` (its `tag`
goes to the model as `X-Legato-Step`). Without Redis (unit tests, plain library use) the shared
policies — breaker, rate limits, budgets, cache — are off.

Before anything else, every model the call may use is bound through the process's credential
policy (credentials.py): on a worker (a gateway with Redis) the worker's own models file decides
each alias's endpoint and credential, whatever the spec embedded; without Redis, by default, the
configs given are the caller's own and are used as they are.

Given a `StepStream` (publisher.py), each HTTP attempt is streamed from the provider and
published as an attempt of its own (its deltas; aborted when it fails), and a cache hit as one
delta; which answer is kept is the caller's to say (`StepStream.answer`). With tracing on, each
attempt is a GenAI span (telemetry.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from tenacity import Retrying

from legato.envelope import (
    HttpAttempt,
    Message,
    Messages,
    ModelAttempt,
    StepRef,
    Usage,
    as_messages,
)
from legato.errors import PermanentError, StepError, TransientError
from legato.models import anthropic, openai_compat
from legato.models.breaker import CircuitBreaker
from legato.models.budget import BudgetMeter, Reservation, cost_of, estimated_cost
from legato.models.cache import Mode, ResponseCache, cache_key
from legato.models.config import Budget, ModelConfig, RateLimit
from legato.models.credentials import Credentials, for_process
from legato.models.openai_compat import Completion
from legato.models.ratelimit import RateLimiter, estimate_tokens
from legato.models.retry import first_then, for_model
from legato.models.telemetry import model_span
from legato.models.transport import Client, as_transport
from legato.publisher import StepStream

Post = Callable[..., Completion]
PROTOCOLS: dict[str, Post] = {"openai": openai_compat.post, "anthropic": anthropic.post}


@dataclass(frozen=True)
class RunScope:
    """What the gateway needs to know about the run a call belongs to."""

    run_id: str
    budget: Budget | None = None
    cache: Mode | None = None  # None: the gateway's default (LEGATO_CACHE)
    started_at: float | None = None  # when the run was created: its deadline counts from here
    tenant: str | None = None  # whose run it is (legato.tenants)...
    limits: Mapping[str, RateLimit] = field(default_factory=dict)  # ...and its limits per alias


class Gateway:
    def __init__(self, http: Client, redis: Any = None, prefix: str = "legato", *,
                 sleep: Callable[[float], None] = time.sleep, default_cache: Mode = "off",
                 credentials: Credentials | None = None) -> None:
        self.http = as_transport(http)  # wrapped once, not per call
        self.redis = redis
        # A shared (worker) gateway defaults to the process's own models file; a bare one
        # trusts the configs it is handed (library use: there is no producer to distrust).
        self._credentials = credentials
        self.sleep = sleep
        self.default_cache = default_cache
        self.breaker = CircuitBreaker(redis, prefix) if redis is not None else None
        self.limiter = RateLimiter(redis, prefix, sleep=sleep) if redis is not None else None
        self.budgets = BudgetMeter(redis, prefix) if redis is not None else None
        self.cache = ResponseCache(redis, prefix) if redis is not None else None

    def complete(
        self, models: dict[str, ModelConfig], alias: str, messages: Messages, *,
        schema: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
        step: StepRef | None = None, step_tag: str | None = None, run: RunScope | None = None,
        trace: list[ModelAttempt] | list[dict[str, Any]] | None = None,
        stream: StepStream | None = None,
    ) -> Completion:
        """One answer from `alias` (or a fallback). `trace` receives a `ModelAttempt` per model
        tried (a caller still typing it `list[dict]` reads them as dicts, for now). `step`
        names the step; a bare `step_tag` string is still taken from callers not moved yet."""
        tried_models = cast(list[ModelAttempt], trace) if trace is not None else []
        tag = step.tag if step is not None else step_tag
        checked = as_messages(messages)
        models = self._bind(models, alias)
        primary = models[alias]
        mode = (run.cache if run is not None else None) or self.default_cache
        digest = None
        if mode != "off" and self.cache is not None:
            digest = cache_key(primary, checked, schema=schema, params=params)
            found = self.cache.lookup(digest)
            if found is not None:  # no call made: nothing used, nothing charged
                hit, seconds = found
                tried_models.append(ModelAttempt(model=alias, cached=digest[:16], outcome="ok",
                                                 saved_usage=hit.usage, saved_seconds=seconds))
                if stream is not None:
                    call = stream.call(alias)
                    call.delta(hit.text)
                    call.answered()
                return Completion(hit.text, Usage(), hit.finish_reason, hit.tool_calls)
            if mode == "replay":
                tried_models.append(ModelAttempt(model=alias, cached=digest[:16],
                                                 outcome="miss"))
                raise PermanentError(f"replay: no recorded response for this call to {alias!r} "
                                     f"(cache key {digest[:16]})")
        reservation: Reservation | None = None
        if run is not None and run.budget is not None and self.budgets is not None:
            estimate = estimate_tokens(checked, {**primary.params, **(params or {})})
            reservation = self.budgets.check(run.run_id, run.budget, started_at=run.started_at,
                                             tokens=estimate,
                                             cost=estimated_cost(primary, estimate))
        # The call's attempts follow (a repair's trace is shared); the first is the entry a
        # tenant's wait is added to.
        first = len(tried_models)
        tenant_limit = self._tenant_limit(run, alias, checked, {**primary.params, **(params or {})})
        try:
            completion = self._complete(models, alias, checked, schema, params, tag,
                                        tried_models, stream)
        except BaseException:
            if reservation is not None and self.budgets is not None:
                self.budgets.release(reservation)
            if tenant_limit is not None:
                tenant_limit(0, tried_models[first:first + 1])
            raise
        if reservation is not None and self.budgets is not None:
            self.budgets.charge(reservation, completion.usage)
        if tenant_limit is not None:
            tenant_limit(completion.usage.total_tokens, tried_models[first:first + 1])
        if digest is not None and self.cache is not None:
            seconds = sum(a.seconds for m in tried_models[first:] for a in m.attempts or ())
            self.cache.put(digest, completion, seconds)
        return completion

    def _tenant_limit(self, run: RunScope | None, alias: str, checked: list[Message],
                      params: dict[str, Any]
                      ) -> Callable[[int, list[ModelAttempt]], None] | None:
        """Wait for the run's tenant's own buckets on `alias` (`<alias>@<tenant>`, beside the
        alias's cluster-wide ones). Returns what, after the call, reconciles the tokens charged
        with those used and adds the wait to the first model entry's `rate_limited`; or None."""
        limit = run.limits.get(alias) if run is not None and run.tenant else None
        if limit is None or self.limiter is None or run is None:
            return None
        bucket, limiter = f"{alias}@{run.tenant}", self.limiter
        estimate = estimate_tokens(checked, params)
        waited = limiter.acquire(bucket, limit, estimate)

        def after(used: int, entries: list[ModelAttempt]) -> None:
            limiter.reconcile(bucket, limit, estimate, used)
            for entry in entries:
                if waited:
                    entry.rate_limited = round((entry.rate_limited or 0) + waited, 3)

        return after

    def _complete(self, models: dict[str, ModelConfig], alias: str, checked: list[Message],
                  schema: dict[str, Any] | None, params: dict[str, Any] | None,
                  tag: str | None, tried_models: list[ModelAttempt],
                  stream: StepStream | None) -> Completion:
        """The alias, else its fallbacks, each under its breaker, rate limit and retries."""
        last: TransientError | None = None
        candidates = _candidates(models, alias)
        tried = False
        for i, name in enumerate([*candidates, alias]):
            cfg = models[name]
            rest = [models[n] for n in candidates[i + 1:]]
            if i == len(candidates):  # every circuit was open: no better place, retry as ever
                if tried:
                    break
                rest = []
            elif self.breaker is not None and not self.breaker.allow(cfg):
                tried_models.append(ModelAttempt(model=name, attempts=[],
                                                 outcome="circuit open"))
                continue
            entry = ModelAttempt(model=name, attempts=[])
            tried_models.append(entry)
            tried = True
            try:
                completion = self._call(name, cfg, checked, schema, params, tag, entry,
                                        rest=rest, stream=stream)
            except TransientError as exc:
                entry.outcome = "failed"
                last = exc
                continue
            except StepError:
                entry.outcome = "failed"
                raise
            entry.outcome = "ok"
            usage = completion.usage.model_copy(update={"cost": cost_of(cfg, completion.usage)})
            return Completion(completion.text, usage, completion.finish_reason,
                              completion.tool_calls)
        names = ", ".join(e.model + ("" if e.attempts else f" ({e.outcome})")
                          for e in tried_models if e.attempts is not None)
        if last is None:
            raise TransientError(f"no model available for {alias!r}: tried {names}")
        raise TransientError(f"{last} (tried {names})", status_code=last.status_code,
                             retry_after=last.retry_after)

    @property
    def credentials(self) -> Credentials:
        if self._credentials is None:
            self._credentials = for_process() if self.redis is not None else \
                Credentials.trusting()
        return self._credentials

    def _bind(self, models: dict[str, ModelConfig], alias: str) -> dict[str, ModelConfig]:
        """The alias and its fallbacks as this process's credential policy allows them."""
        policy = self.credentials
        if alias not in models:
            raise PermanentError(f"unknown model alias {alias!r}")
        return {name: policy.bind(name, models[name]) for name in _candidates(models, alias)}

    def _call(self, name: str, cfg: ModelConfig, messages: list[Message],
              schema: dict[str, Any] | None, params: dict[str, Any] | None,
              step_tag: str | None, entry: ModelAttempt, *,
              rest: list[ModelConfig], stream: StepStream | None = None) -> Completion:
        attempts = entry.attempts
        assert attempts is not None  # the entry of a model being called
        post = PROTOCOLS[cfg.protocol]
        breaker, limiter = self.breaker, self.limiter
        estimate = 0

        def once() -> Completion:
            nonlocal estimate
            if limiter is not None and cfg.rate_limit is not None:
                estimate = estimate_tokens(messages, {**cfg.params, **(params or {})})
                waited = limiter.acquire(name, cfg.rate_limit, estimate)
                if waited:
                    entry.rate_limited = round((entry.rate_limited or 0) + waited, 3)
            started = time.monotonic()
            call = stream.call(name) if stream is not None else None
            try:
                with model_span(name, cfg, step_tag) as span:
                    if call is None:
                        completion = post(self.http, cfg, messages, schema=schema,
                                          params=params, step_tag=step_tag)
                    else:
                        completion = post(self.http, cfg, messages, schema=schema,
                                          params=params, step_tag=step_tag,
                                          on_delta=call.delta)
                    if span is not None:
                        span.answered(completion)
            except StepError as exc:
                if call is not None:
                    call.abort(str(exc))
                attempts.append(HttpAttempt(
                    error=str(exc), type=type(exc).__name__,
                    seconds=round(time.monotonic() - started, 3),
                    status=getattr(exc, "status_code", None),
                    retry_after=getattr(exc, "retry_after", None)))
                if isinstance(exc, TransientError) and breaker is not None:
                    breaker.failure(cfg)
                if limiter is not None and cfg.rate_limit is not None:
                    limiter.reconcile(name, cfg.rate_limit, estimate, 0)
                raise
            attempts.append(HttpAttempt(status=200,
                                        seconds=round(time.monotonic() - started, 3)))
            if call is not None:
                call.answered()
            if breaker is not None:
                breaker.success(cfg)
            if limiter is not None and cfg.rate_limit is not None:
                limiter.reconcile(name, cfg.rate_limit, estimate, completion.usage.total_tokens)
            return completion

        def waited(seconds: float) -> None:
            attempts[-1].wait = round(seconds, 3)

        def give_up() -> bool:  # the circuit opened: go on to a model whose circuit is not
            if breaker is None or not breaker.is_open(cfg):
                return False
            return any(not breaker.is_open(other) for other in rest)

        def policy() -> Retrying:  # made only when the first attempt fails transiently
            made = for_model(cfg.max_attempts, cfg.max_retry_wait, give_up=give_up,
                             waited=waited)
            made.sleep = self.sleep
            return made

        return first_then(policy, once)


def _candidates(models: dict[str, ModelConfig], alias: str) -> list[str]:
    """The alias, then its fallbacks (and theirs), each once, in order."""
    order: list[str] = []
    pending = [alias]
    while pending:
        name = pending.pop(0)
        if name in order or name not in models:
            continue
        order.append(name)
        pending.extend(models[name].fallbacks)
    return order
