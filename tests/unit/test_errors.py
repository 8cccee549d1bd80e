"""The error hierarchy: its shape, and errors that survive crossing a process boundary."""

from __future__ import annotations

import pickle

import pytest

from legato.errors import (
    BudgetExceeded,
    Cancelled,
    GateFailed,
    InputError,
    LegatoError,
    OutputInvalid,
    PermanentError,
    RunNotFound,
    SpecError,
    StepError,
    TransientError,
)

STEP_ERRORS = [TransientError, OutputInvalid, PermanentError, GateFailed, BudgetExceeded,
               Cancelled]
DEFINITION_ERRORS = [SpecError, InputError, RunNotFound]


def _roundtrip(err: Exception) -> Exception:
    return pickle.loads(pickle.dumps(err))


def test_transient_error_pickles_with_its_attributes() -> None:
    err = _roundtrip(TransientError("rate limited", status_code=429, retry_after=1.5))
    assert type(err) is TransientError
    assert (str(err), err.status_code, err.retry_after) == ("rate limited", 429, 1.5)


def test_permanent_error_pickles_with_its_status_code() -> None:
    err = _roundtrip(PermanentError("bad request", status_code=400))
    assert type(err) is PermanentError
    assert (str(err), err.status_code) == ("bad request", 400)


def test_spec_error_pickles_with_source_and_path() -> None:
    original = SpecError("unknown field", source="pipelines/x.yaml", path="steps[0].foo")
    err = _roundtrip(original)
    assert type(err) is SpecError
    assert (err.source, err.path, err.reason) == ("pipelines/x.yaml", "steps[0].foo",
                                                  "unknown field")
    assert str(err) == str(original) == "pipelines/x.yaml:steps[0].foo: unknown field"


def test_spec_error_without_location_is_just_the_reason() -> None:
    assert str(SpecError("bad")) == "bad"
    assert str(SpecError("bad", path="steps[1]")) == "steps[1]: bad"


@pytest.mark.parametrize("cls", STEP_ERRORS + DEFINITION_ERRORS + [LegatoError, StepError])
def test_every_error_pickles_and_rebuilds_from_its_args(cls: type[LegatoError]) -> None:
    err = _roundtrip(cls("boom"))
    assert type(err) is cls and str(err) == "boom" and err.message == "boom"
    # Celery's JSON result backend rebuilds an exception as `cls(*args)`.
    rebuilt = cls(*err.args)
    assert type(rebuilt) is cls and str(rebuilt) == "boom"


def test_transient_is_a_step_error_is_a_legato_error() -> None:
    assert issubclass(TransientError, StepError)
    assert issubclass(StepError, LegatoError)
    assert issubclass(LegatoError, Exception)


@pytest.mark.parametrize("cls", STEP_ERRORS)
def test_run_time_errors_are_step_errors(cls: type[LegatoError]) -> None:
    assert issubclass(cls, StepError)


@pytest.mark.parametrize("cls", DEFINITION_ERRORS)
def test_definition_time_errors_are_not_step_errors(cls: type[LegatoError]) -> None:
    assert issubclass(cls, LegatoError)
    assert not issubclass(cls, StepError)


def test_retryable_is_a_type_not_a_flag() -> None:
    # The retry policy retries TransientError only; nothing else may be a subclass of it.
    others = [c for c in STEP_ERRORS if c is not TransientError]
    assert not any(issubclass(c, TransientError) for c in others)
    assert not issubclass(TransientError, PermanentError)
