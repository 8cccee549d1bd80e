"""The console's parts that need no server: tags' limits, the credentials check, the query's
validation, and the pages' escaping of hostile run data."""

from __future__ import annotations

import base64
import time

import pytest
from pydantic import SecretStr, ValidationError

from legato.console.auth import Credentials
from legato.console.render import run_page, runs_page
from legato.envelope import RunRecord, StepRecord
from legato.errors import InputError
from legato.search import RunPage, RunQuery
from legato.settings import Settings
from legato.tags import MAX_TAGS, check_tags, matches, parse_tags

HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>\x1b[2J'


def test_tags_are_short_plain_labels():
    assert check_tags({"team": "billing", "ticket": "T-1042", "url": "a.b/c:d@e+f=g"}) == {
        "team": "billing", "ticket": "T-1042", "url": "a.b/c:d@e+f=g"}
    assert check_tags(None) == {} and check_tags({"empty": ""}) == {"empty": ""}
    refused = {
        "tags: key 'bad key'": {"bad key": "x"},
        "tags: key '-lead'": {"-lead": "x"},
        "tags.team: value '<b>'": {"team": "<b>"},
        "tags.team: value 'a b'": {"team": "a b"},
        "tags.n: the value must be a string, got int": {"n": 3},
        f"tags: {MAX_TAGS + 1} given, at most {MAX_TAGS}": {
            f"k{i}": "v" for i in range(MAX_TAGS + 1)},
        "tags: key 'kkkk": {"k" * 65: "v"},
        "tags.k: value 'vvvv": {"k": "v" * 129},
    }
    for message, tags in refused.items():
        with pytest.raises(InputError) as caught:
            check_tags(tags)
        assert str(caught.value).startswith(message), (message, str(caught.value))
    with pytest.raises(InputError, match="tags: expected an object"):
        check_tags(["team=billing"])


def test_tags_from_key_value_pairs():
    assert parse_tags(["team=billing", "expr=a=b"]) == {"team": "billing", "expr": "a=b"}
    with pytest.raises(InputError, match="--tag 'team': expected key=value"):
        parse_tags(["team"])
    with pytest.raises(InputError, match="given twice"):
        parse_tags(["a=1", "a=2"])
    assert matches({"a": "1", "b": "2"}, {"a": "1"}) and not matches({"a": "1"}, {"a": "2"})
    assert not matches({}, {"a": ""})


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_credentials_from_settings_and_the_check():
    assert Credentials.from_settings(Settings()) is None
    with pytest.raises(ValueError, match="LEGATO_CONSOLE_PASSWORD is not set"):
        Credentials.from_settings(Settings(console_user="ops"))
    with pytest.raises(ValueError, match="LEGATO_CONSOLE_USER is not set"):
        Credentials.from_settings(Settings(console_password=SecretStr("pw")))

    token = Credentials.from_settings(Settings(console_token=SecretStr("s3cret")))
    assert token is not None
    assert token.allows("Bearer s3cret") and token.allows("bearer  s3cret ")
    assert token.allows(_basic("anyone", "s3cret"))  # a browser: the token as the password
    for wrong in ("", "Bearer", "Bearer s3cre", "Bearer s3cret2", "Token s3cret",
                  _basic("anyone", "nope"), "Basic !!!", "Basic " + base64.b64encode(
                      b"no-colon").decode(), "Basic " + base64.b64encode(b"\xff:\xfe").decode()):
        assert not token.allows(wrong), wrong

    pair = Credentials.from_settings(Settings(console_user="ops",
                                              console_password=SecretStr("pw")))
    assert pair is not None and pair.allows(_basic("ops", "pw"))
    for wrong in (_basic("ops", "pw2"), _basic("ops2", "pw"), _basic("", ""), "Bearer pw",
                  "Bearer "):
        assert not pair.allows(wrong), wrong


def test_run_queries_are_checked():
    assert RunQuery(tags={"a": "b"}, status="failed").tags == {"a": "b"}
    with pytest.raises(ValidationError, match="no run state 'done'"):
        RunQuery(status="done")
    with pytest.raises(ValidationError, match="tags.x: value"):
        RunQuery(tags={"x": "<"})
    with pytest.raises(ValidationError):
        RunQuery(limit=0)


def _hostile_run() -> tuple[RunRecord, list[StepRecord]]:
    now = time.time()
    run = RunRecord(id="r1", pipeline=HOSTILE, spec_hash="h" * 64, status="failed",
                    input={"text": HOSTILE}, error=HOSTILE, created_at=now - 2,
                    started_at=now - 2, finished_at=now, tags={"team": "billing"})
    step = StepRecord(path=HOSTILE, status="failed", kind="llm", error=HOSTILE,
                      output=HOSTILE, started_at=now - 1, ended_at=now,
                      detail={"model_calls": [{"model": HOSTILE, "outcome": "failed",
                                               "attempts": [{"error": HOSTILE,
                                                             "seconds": 0.1}]}]})
    return run, [step]


def test_pages_escape_what_runs_hold():
    run, steps = _hostile_run()
    pages = [run_page(run, steps, None, {"x": HOSTILE}),
             runs_page(RunPage(runs=[run], scanned=1, complete=True), {"q": HOSTILE},
                       [HOSTILE])]
    for html in pages:
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "\x1b" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img" in html
        assert html.count("<script") == 1  # the console's own, from /static
        assert '<script src="/static/console.js"></script>' in html
    assert "model calls" in pages[0] and 'class="calls"' in pages[0]
    assert 'data-action="resume"' in pages[0]  # a failed run resumes
    assert 'data-action="cancel"' not in pages[0]
