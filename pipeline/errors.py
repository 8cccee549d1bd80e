"""Legato's one error hierarchy.

Definition-time errors (a bad pipeline, a bad input) are apart from run-time ones, and whether a
run-time error is retried is decided by its *type*::

    LegatoError
    ├── SpecError            bad pipeline definition (file + path inside it + reason)
    ├── InputError           job input does not match the pipeline's input schema
    │   └── SignalRefused    a signal for no such step, a step not waiting, a finished run,
    │                        a payload off its schema, or one already signalled
    ├── RunNotFound          no run with that id
    └── StepError            something failed while running
        ├── TransientError   retry with backoff (HTTP 429/5xx, timeouts, connection errors)
        ├── OutputInvalid    model output failed its schema: re-ask with the validation error
        ├── PermanentError   do not retry (4xx other than 429, context too long, tool refused)
        ├── GateFailed       a gate in a chain stopped it
        ├── BudgetExceeded   tokens / cost / turns / deadline spent
        └── Cancelled

Exceptions cross process boundaries, so constructors take simple arguments (one message string plus
keyword attributes) and keep `status_code`, `retry_after` and the like as attributes.
"""

from __future__ import annotations

from typing import Any


class LegatoError(Exception):
    """Root of every error Legato raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle by message and attributes, so subclasses with keyword attributes round-trip.
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: type[LegatoError], message: str, attrs: dict[str, Any]) -> LegatoError:
    err = cls.__new__(cls)
    LegatoError.__init__(err, message)
    err.__dict__.update(attrs)
    return err


class SpecError(LegatoError):
    """A pipeline definition is invalid. `source` is the file, `path` the location inside it."""

    def __init__(self, message: str, *, source: str = "", path: str = "") -> None:
        where = ":".join(p for p in (source, path) if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.reason = message
        self.source = source
        self.path = path


class InputError(LegatoError):
    """A job input was refused before anything was enqueued."""


class SignalRefused(InputError):
    """A signal was refused, and nothing changed (legato.signals)."""


class RunNotFound(LegatoError):
    """No run with the given id exists in the store."""


class StepError(LegatoError):
    """A step failed while running."""


class TransientError(StepError):
    """Worth retrying with backoff: rate limits, server errors, timeouts, dropped connections."""

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


class OutputInvalid(StepError):
    """Model output was not valid JSON or failed the step's output schema."""


class PermanentError(StepError):
    """Retrying cannot help: a 4xx other than 429, a context too long, a refused tool call."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class GateFailed(StepError):
    """A gate's check on a step's output was false, so the chain stops here."""


class BudgetExceeded(StepError):
    """A run's budget (tokens, cost, calls, turns or deadline) is spent."""


class Cancelled(StepError):
    """The run was cancelled."""
