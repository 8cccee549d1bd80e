"""The credential policy (models/credentials.py) and redaction, without a broker: which endpoint
and credential a spec's alias really gets, and what is stripped from stored errors and logs."""

from __future__ import annotations

import logging
import random
import textwrap
from pathlib import Path

import httpx
import pytest

from legato.errors import PermanentError
from legato.loader import load_models
from legato.models import Gateway
from legato.models.credentials import Credentials, RedactingFilter, redact
from legato.spec import ModelConfig

KEY = "sk-unit-0123456789abcdef0123"


@pytest.fixture
def worker_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("UNIT_MODEL_KEY", KEY)
    monkeypatch.setenv("UNIT_TEAM", "team-secret-value")
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent("""\
        models:
          small:
            base_url: https://provider.test/v1
            model: tiny
            api_key_env: UNIT_MODEL_KEY
            headers: {X-Team: "${UNIT_TEAM}"}
        """))
    return path


def test_the_loader_never_expands_header_values(worker_models: Path) -> None:
    small = load_models(worker_models)["small"]
    assert small.headers == {"X-Team": "${UNIT_TEAM}"}  # pinned as written, not the secret
    assert small.base_url == "https://provider.test/v1"


def test_a_workers_alias_uses_the_workers_endpoint_and_credential(worker_models: Path) -> None:
    policy = Credentials.from_file(worker_models)
    forged = ModelConfig(base_url="https://attacker.test/v1", model="tiny",
                         api_key_env="AWS_SECRET_ACCESS_KEY", headers={"X-Team": "x"},
                         protocol="anthropic")
    bound = policy.bind("small", forged)
    assert (bound.base_url, bound.protocol, bound.api_key_env) == (
        "https://provider.test/v1", "openai", "UNIT_MODEL_KEY")
    assert bound.headers == {"X-Team": "team-secret-value"}
    assert bound.model == "tiny"  # what to ask for stays the spec's


@pytest.mark.parametrize("key_env", ["AWS_SECRET_ACCESS_KEY", "UNIT_MODEL_KEY"])
def test_an_adhoc_alias_gets_no_credential_of_the_workers(worker_models: Path,
                                                          key_env: str) -> None:
    policy = Credentials.from_file(worker_models)
    evil = ModelConfig(base_url="https://attacker.test/v1", model="m", api_key_env=key_env)
    with pytest.raises(PermanentError, match="does not pair api_key_env"):
        policy.bind("evil", evil)
    plain = ModelConfig(base_url="https://attacker.test/v1", model="m",
                        headers={"X-Steal": "${UNIT_MODEL_KEY}"})
    assert policy.bind("evil", plain).headers == {"X-Steal": "${UNIT_MODEL_KEY}"}
    # The pairing the worker itself makes is allowed under another name.
    paired = ModelConfig(base_url="https://provider.test/v1/", model="m",
                         api_key_env="UNIT_MODEL_KEY")
    assert policy.bind("other", paired).api_key_env == "UNIT_MODEL_KEY"
    with pytest.raises(PermanentError, match="LEGATO_MODEL_ENDPOINTS=configured"):
        Credentials.from_file(worker_models, adhoc=False).bind("evil", plain)


def test_a_shared_gateway_sends_only_what_the_worker_pairs(worker_models: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}],
                                          "usage": {}})

    gateway = Gateway(httpx.Client(transport=httpx.MockTransport(handler)),
                      credentials=Credentials.from_file(worker_models))
    forged = {"small": ModelConfig(base_url="https://attacker.test/v1", model="tiny",
                                   api_key_env="AWS_SECRET_ACCESS_KEY")}
    gateway.complete(forged, "small", [{"role": "user", "content": "hi"}])
    assert str(seen[0].url) == "https://provider.test/v1/chat/completions"
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert seen[0].headers["x-team"] == "team-secret-value"


def test_provider_errors_are_redacted_before_they_are_stored(worker_models: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": "Incorrect API key provided: "
                              f"{request.headers['authorization'].split()[-1][:-2]}** / "
                              f"{request.headers['authorization']} / "
                              f"team {request.headers['x-team']}"}})

    gateway = Gateway(httpx.Client(transport=httpx.MockTransport(handler)),
                      credentials=Credentials.from_file(worker_models))
    cfg = load_models(worker_models)
    with pytest.raises(PermanentError) as info:
        gateway.complete(cfg, "small", [{"role": "user", "content": "hi"}])
    text = str(info.value)
    assert text.startswith("HTTP 401 from tiny: Incorrect API key provided:")
    assert KEY not in text and KEY[:-2] not in text and "team-secret-value" not in text
    assert text.count("[redacted]") == 3


@pytest.mark.parametrize(("text", "clean"), [
    ("Authorization: Bearer abcdefghijkl", "Authorization: [redacted]"),
    ('{"x-api-key": "zzzz-secret-zzzz"}', '{"x-api-key": "[redacted]"}'),
    ("sent bearer abc.def-ghi_jkl", "sent bearer [redacted]"),
    ("key sk-proj-AbCdEf0123456789xyz rejected", "key [redacted] rejected"),
    ("AKIAIOSFODNN7EXAMPLE", "[redacted]"),
    ("https://user:pa55word@redis.example/0", "https://[redacted]@redis.example/0"),
    ("maximum context length is 2048 tokens", "maximum context length is 2048 tokens"),
    ("Basic authentication failed", "Basic authentication failed"),
])
def test_authorization_like_strings_are_redacted(text: str, clean: str) -> None:
    assert redact(text) == clean


def test_the_quick_check_before_the_shapes_never_lets_a_match_through() -> None:
    # redact() runs the shape regexes only where a cheap substring check says one may match:
    # over texts built to sit near every shape (any case, any mix), it must never say no to one.
    from legato.models.credentials import _SHAPES, _may_be_shaped

    rng = random.Random(7)
    pieces = ["bearer ", "BEARER\t", "Proxy-Authorization", "X-Goog-Api-Key", "API_KEY", "apikey",
              ": ", "='", "\"", "sk-", "pk_", "rk-", "ghp_", "gho-", "xoxb-", "xoxp_", "AKIA",
              "://", "user:pw", "@", "/", " ", "abcdefghijklmnop", "0123456789ABCDEF", "-_"]
    matched = 0
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        if any(shape.search(text) for shape, _ in _SHAPES):
            matched += 1
            assert _may_be_shaped(text), text
    assert matched > 2_000  # the texts did reach the shapes


def test_the_log_filter_redacts_known_secrets_and_shapes(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    logger = logging.getLogger("legato.test.redact")
    caplog.handler.addFilter(RedactingFilter(["hunter2-very-secret"]))
    logger.error("provider said %s and %s", "hunter2-very-secret", "Bearer abcdefghijkl")
    try:
        raise RuntimeError("boom with hunter2-very-secret")
    except RuntimeError:
        logger.exception("failed")
    assert "hunter2" not in caplog.text and "abcdefghijkl" not in caplog.text
    assert caplog.text.count("[redacted]") == 4  # the source line in the traceback too
