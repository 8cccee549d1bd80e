"""Retry policies as named values."""

from __future__ import annotations

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from pipeline.errors import TransientError

_backoff = wait_random_exponential(multiplier=0.5, max=20)


def _wait(state: RetryCallState) -> float:
    """Honour the server's Retry-After when it gives one; else exponential backoff with jitter."""
    exc = state.outcome.exception() if state.outcome else None
    hinted = getattr(exc, "retry_after", None)
    if hinted is not None:
        return min(float(hinted), 60.0)
    return _backoff(state)


MODEL_CALL = Retrying(
    retry=retry_if_exception_type(TransientError),
    stop=stop_after_attempt(4) | stop_after_delay(90),
    wait=_wait,
    reraise=True,
)
