"""Completion callbacks without a broker: what submit refuses, the signature, the retry policy
and the outcome."""

from __future__ import annotations

import json

import pytest

from legato import OnDone
from legato.callbacks import (
    Backoff,
    body,
    check_on_done,
    delivery_id,
    outcome,
    pending,
    sign,
    verify_signature,
)
from legato.envelope import Delivery, RunRecord
from legato.errors import InputError

HOSTS = ("https://hooks.example.com", "http://127.0.0.1:*")


@pytest.mark.parametrize(("on_done", "message"), [
    ({"url": "https://evil.example.net/x"},
     "on_done.url: refused URL 'https://evil.example.net/x': host 'evil.example.net' is not in "
     "LEGATO_WEBHOOK_HOSTS"),
    ({"url": "http://hooks.example.com/x"}, "allowed, but not as http on port 80"),
    ({"url": "ftp://127.0.0.1/x"}, "on_done.url: refused URL 'ftp://127.0.0.1/x': only http(s)"),
    ({"url": "https://hooks.example.com/a b"}, "on_done.url: not a URL"),
    ({"task": "two words"}, "on_done.task: a task name is letters"),
    ({"task": "legato.submit"}, "on_done.task: 'legato.submit' is one of Legato's own tasks"),
    ({"task": "ops.notify", "queue": "a queue"}, "on_done.queue: a queue name is letters"),
    ({"queue": "ops", "url": "https://hooks.example.com/x"}, "on_done: a queue goes with a task"),
    ({}, "give a task, a url, or both"),
    ({"task": "ops.notify", "when": "now"}, "on_done.when: unknown field"),
    ("https://hooks.example.com/x", "on_done: expected an object"),
])
def test_bad_callbacks_are_refused_in_one_line_naming_the_field(on_done, message):
    with pytest.raises(InputError) as info:
        check_on_done(on_done, hosts=HOSTS)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_good_callbacks_pass_and_no_hosts_allow_no_webhook():
    told = check_on_done({"task": "ops.notify", "queue": "ops", "url":
                          "https://hooks.example.com/legato"}, hosts=HOSTS)
    assert told == OnDone(task="ops.notify", queue="ops", url="https://hooks.example.com/legato")
    assert told is not None and told.targets == ["task", "webhook"]
    assert check_on_done(None, hosts=()) is None
    with pytest.raises(InputError, match="not in LEGATO_WEBHOOK_HOSTS"):
        check_on_done({"url": "https://hooks.example.com/legato"}, hosts=())


def test_the_signature_verifies_only_with_the_secret_the_body_and_a_fresh_timestamp():
    secret, payload = b"k3y", b'{"run_id":"r1"}'
    signature = sign(secret, 1_800_000_000, payload)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify_signature(secret, payload, "1800000000", signature, now=1_800_000_010)
    assert not verify_signature(b"other", payload, "1800000000", signature, now=1_800_000_010)
    assert not verify_signature(secret, payload + b" ", "1800000000", signature,
                                now=1_800_000_010)
    assert not verify_signature(secret, payload, "1800000001", signature, now=1_800_000_010)
    assert not verify_signature(secret, payload, "1800000000", signature, now=1_800_001_000)
    assert not verify_signature(secret, payload, "soon", signature)


def test_the_backoff_doubles_up_to_its_cap():
    policy = Backoff(attempts=5, first=2.0, cap=10.0)
    assert [policy.wait(n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 10.0, 10.0]


def _run(**fields) -> RunRecord:
    base = dict(id="r1", pipeline="summarize", spec_hash="h", status="succeeded", output="out",
                created_at=100.0, started_at=101.0, finished_at=103.5,
                on_done=OnDone(task="ops.notify", url="https://hooks.example.com/x"))
    return RunRecord(**{**base, **fields})


def test_the_outcome_says_how_the_run_ended_and_is_the_signed_body():
    run = _run()
    told = outcome(run, "webhook")
    assert told["run_id"] == "r1" and told["status"] == "succeeded" and told["output"] == "out"
    assert told["seconds"] == 2.5 and told["delivery_id"] == "r1.0.webhook"
    assert json.loads(body(run)) == told
    failed = outcome(_run(status="failed", output=None, error="a: boom"), "task")
    assert failed["error"] == "a: boom" and failed["output"] is None
    # A resumed run that finishes again is a new delivery; the same finish is the same id.
    assert delivery_id(_run(resumes=1), "webhook") == "r1.1.webhook"


def test_pending_targets_are_those_without_a_last_try():
    tried = Delivery(target="webhook", delivery_id="r1.0.webhook", at=1.0, ok=False, status=500)
    taken = Delivery(target="task", delivery_id="r1.0.task", at=1.0, ok=True, final=True)
    assert pending(_run(deliveries=[tried])) == ["task", "webhook"]
    assert pending(_run(deliveries=[tried, taken])) == ["webhook"]
    assert pending(_run(on_done=None)) == []
