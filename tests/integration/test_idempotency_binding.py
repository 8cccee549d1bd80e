"""An idempotency key is bound to the job it was first used for — the pipeline and the input: the
same job again returns the first run; another job under the same key is a clear error and
changes nothing."""

from __future__ import annotations

import pytest

from legato import InputError


def test_the_same_key_for_the_same_job_returns_the_first_run(legato, fake):
    first = legato.submit("summarize", {"text": "one job"}, idempotency_key="bound-1")
    again = legato.submit("summarize", {"text": "one job"}, idempotency_key="bound-1")
    assert again == first
    assert legato.wait(first, timeout=30).status == "succeeded"


@pytest.mark.parametrize("pipeline, job_input, what", [
    ("summarize", {"text": "another input"}, "another input"),
    ("word_detective", {"text": "one job", "question": "which?"}, "another pipeline"),
])
def test_the_same_key_for_another_job_is_refused(legato, fake, redis_server, pipeline,
                                                 job_input, what):
    key = f"bound-{what.replace(' ', '-')}"
    first = legato.submit("summarize", {"text": "one job"}, idempotency_key=key)
    client = redis_server.client()
    runs_before = client.zcard("legato:runs")
    with pytest.raises(InputError) as refused:
        legato.submit(pipeline, job_input, idempotency_key=key)
    message = str(refused.value)
    assert f"idempotency key {key!r} was used for {what}" in message, message
    assert first in message
    assert client.zcard("legato:runs") == runs_before  # nothing written, nothing sent
    assert legato.wait(first, timeout=30).status == "succeeded"
