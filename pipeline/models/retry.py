"""Retry policies as named values: tenacity around one HTTP call, nothing else retries it.

`MODEL_CALL` is the default; `for_model` narrows it to a model's config (attempts, total wait) and
adds a stop condition from outside (the provider's circuit opened) and a hook that records each
wait. `first_then` makes a call's first attempt before its policy, which is built only for a
call that needs it. Waits honour the server's `Retry-After` / `x-ratelimit-reset-*`; when the
server asks for more than the wait left, retrying stops at once (the caller falls back instead
of sleeping).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from legato.errors import TransientError

_backoff = wait_random_exponential(multiplier=0.5, max=20)
MAX_HINTED_WAIT = 60.0
T = TypeVar("T")


def _hint(state: RetryCallState) -> float | None:
    exc = state.outcome.exception() if state.outcome else None
    hinted = getattr(exc, "retry_after", None)
    return None if hinted is None else min(float(hinted), MAX_HINTED_WAIT)


def _wait(state: RetryCallState) -> float:
    """Honour the server's Retry-After when it gives one; else exponential backoff with jitter."""
    hinted = _hint(state)
    return hinted if hinted is not None else _backoff(state)


MODEL_CALL = Retrying(
    retry=retry_if_exception_type(TransientError),
    stop=stop_after_attempt(4) | stop_after_delay(90),
    wait=_wait,
    reraise=True,
)


class _stop_when(stop_base):
    def __init__(self, predicate: Callable[[RetryCallState], bool]) -> None:
        self.predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.predicate(retry_state)


def for_model(
    max_attempts: int,
    max_wait: float,
    *,
    give_up: Callable[[], bool] = lambda: False,
    waited: Callable[[float], None] = lambda _: None,
) -> Retrying:
    """MODEL_CALL bounded by `max_attempts` and `max_wait` seconds of waiting in total."""
    spent: list[float] = []

    def over_budget(state: RetryCallState) -> bool:
        hinted = _hint(state)
        left = max_wait - sum(spent)
        return left <= 0 or (hinted is not None and hinted > left) or give_up()

    def before_sleep(state: RetryCallState) -> None:
        seconds = state.next_action.sleep if state.next_action else 0.0
        spent.append(seconds)
        waited(seconds)

    def capped(state: RetryCallState) -> float:
        return min(_wait(state), max(0.0, max_wait - sum(spent)))

    kwargs: dict[str, Any] = {
        "stop": stop_after_attempt(max_attempts) | _stop_when(over_budget),
        "wait": capped,
        "before_sleep": before_sleep,
    }
    return MODEL_CALL.copy(**kwargs)


def first_then(policy: Callable[[], Retrying], call: Callable[[], T]) -> T:
    """`policy()(call)`, with the first attempt made before the policy: most calls succeed at
    once, and building and entering a tenacity policy for each was ~9 % of a worker's CPU per
    job (docs/benchmarks.md). When the first attempt raises a TransientError, the policy is
    made and sees that very exception as its first attempt's outcome (its attempt count, waits
    and stop conditions run as they would have), then calls `call` again for the rest."""
    try:
        return call()
    except TransientError as exc:
        first: list[BaseException] = [exc]

    def attempt() -> T:
        if first:
            raise first.pop()
        return call()

    return policy()(attempt)
