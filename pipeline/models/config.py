"""Model aliases as data: where a call goes, what it costs, its limits — and a run's budget."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from legato.fields import Strict


class Prices(Strict):
    """What a model costs, in currency units per million tokens."""

    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)


class RateLimit(Strict):
    """A cluster-wide limit on one model alias: token buckets in Redis shared by every worker.

    In any window of `per` seconds at most `requests` calls (and about `tokens` tokens) start.
    """

    requests: int | None = Field(None, ge=1, description="requests per window (e.g. RPM)")
    tokens: int | None = Field(None, ge=1, description="tokens per window (e.g. TPM)")
    per: float = Field(60.0, gt=0, description="the window, in seconds")


class Breaker(Strict):
    """A circuit breaker per provider (base_url + model), shared through Redis."""

    failures: int = Field(5, ge=1, description="consecutive failed attempts that open it")
    cooldown: float = Field(30.0, gt=0, description="seconds open before a half-open probe")


class ModelConfig(Strict):
    """A model alias resolved: where to call, what to ask for, and where its key lives."""

    base_url: str
    model: str
    protocol: Literal["openai", "anthropic"] = "openai"
    fallbacks: list[str] = Field(default_factory=list, description="aliases tried in order")
    max_attempts: int = Field(4, ge=1, le=20, description="HTTP attempts per model, retries incl.")
    max_retry_wait: float = Field(60.0, ge=0, description="total seconds of backoff per model")
    breaker: Breaker | None = Field(default_factory=lambda: Breaker(failures=5, cooldown=30.0))
    rate_limit: RateLimit | None = None
    prices: Prices | None = None
    api_key_env: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = None
    structured_output: Literal["json_schema", "json_object"] = Field(
        "json_schema",
        description="how to ask for schema output: OpenAI's json_schema response format, or "
        "json_object with the schema (llama.cpp's server) and the schema stated in the prompt",
    )


class Budget(Strict):
    """Limits on one run's model use; when one is spent the run stops with BudgetExceeded."""

    max_tokens: int | None = Field(None, ge=1)
    max_cost: float | None = Field(None, gt=0, description="from the models' `prices`")
    max_calls: int | None = Field(None, ge=1)
    deadline_seconds: float | None = Field(None, gt=0, description="from the run's creation")
