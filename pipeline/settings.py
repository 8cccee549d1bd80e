"""One Settings object for every `LEGATO_*` variable, read from the environment once, at the edges.

`Settings.from_env()` (or the process-wide `get_settings()`) reads the environment; `Settings(...)`
is exactly what it is given, the defaults otherwise — it never looks at the environment, so
library code and tests that build one get what they asked for. Library code takes arguments: only
the CLI, the worker wiring (workers/app.py, workers/runtime.py) and the client's defaults read
this. `replace(settings, field=value)` is a copy with some fields changed (checked again).

A few `LEGATO_*` names are not settings, and are read where they belong (`ELSEWHERE`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

ModelTransport = Literal["aiohttp", "httpx"]
MODEL_TRANSPORTS: tuple[ModelTransport, ...] = ("aiohttp", "httpx")
CacheMode = Literal["off", "read-write", "replay"]  # models/cache.py's Mode
CACHE_MODES: tuple[CacheMode, ...] = ("off", "read-write", "replay")
LogFormat = Literal["text", "json"]
# `watched`: a step streams only while someone follows its run (legato.events.watching);
# `always`: every model step streams; `off`: none does.
StreamMode = Literal["off", "watched", "always"]
_ON = ("1", "true", "yes", "on")

# `LEGATO_*` names that are not Settings fields, and who reads them.
ELSEWHERE: dict[str, str] = {
    "LEGATO_DEBUG": "the CLI: show tracebacks (read even when the settings themselves fail)",
    "LEGATO_MODEL_API_KEY": "models.yaml: the example aliases' `api_key_env` (the worker reads it)",
    "LEGATO_STRUCTURED_OUTPUT": "models.yaml: `${LEGATO_STRUCTURED_OUTPUT:-...}`",
    "LEGATO_MODEL_NAME": "models.yaml: `${LEGATO_MODEL_NAME:-...}`",
    "LEGATO_LARGE_MODEL_NAME": "models.yaml: `${LEGATO_LARGE_MODEL_NAME:-...}`",
    "LEGATO_IMAGE": "docker-compose.yml: the image to run",
    "LEGATO_IMAGE_EXTRAS": "docker-compose.yml: the extras the image is built with",
    "LEGATO_CONTROL_CONCURRENCY": "docker-compose.yml: worker-control's `-c`",
    "LEGATO_LLM_CONCURRENCY": "docker-compose.yml: worker-llm's `-c`",
    "LEGATO_TOOLS_CONCURRENCY": "docker-compose.yml: worker-tools' `-c`",
    "LEGATO_BILLING_CONCURRENCY": "docker-compose.yml: worker-billing's `-c`",
    "LEGATO_TECHNICAL_CONCURRENCY": "docker-compose.yml: worker-technical's `-c`",
    "LEGATO_MODEL_IMAGE": "docker-compose.yml: the model service's image",
    "LEGATO_CONSOLE_PORT": "docker-compose.yml: the console's published port",
    "LEGATO_MODEL_IMAGE_EXTRAS": "docker-compose.yml: the extras the model image is built with",
    "LEGATO_COMPOSE_KEEP": "compose_tests/: leave the stack up after `make compose-test`",
    "LEGATO_FAULT_SCALE": "tests/faults: how long the fault suite runs",
}


def _comma_list(value: Any, *, lower: bool = False) -> Any:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
        return tuple(v.lower() if lower else v for v in items if v)
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEGATO_", frozen=True, extra="ignore",
                                      populate_by_name=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = ""  # empty: same as redis_url
    pipelines_dir: Path = Path("pipelines")
    models_file: str = ""  # empty: <pipelines_dir>/models.yaml
    mcp_file: str = ""  # the MCP servers tool workers call; empty: <pipelines_dir>/mcp.yaml
    key_prefix: str = "legato"
    http_timeout: float = 60.0
    http_max_connections: int = 256
    # How a worker process makes model calls: "aiohttp" (one event-loop thread per process, pool
    # threads parked on futures; ~0.4 ms CPU a call) or "httpx" (one shared sync client, 2–9 ms
    # a call at 100–500 connections). See docs/benchmarks.md, "The model-call path".
    model_transport: ModelTransport = "aiohttp"
    # With "aiohttp": run a chain segment's steps on that event loop's thread (legato.bridge),
    # their Redis commands and model calls awaited there, not in a pool thread each.
    steps_on_loop: bool = True
    tool_modules: Annotated[tuple[str, ...], NoDecode] = ()  # comma-separated
    # Durability: a step's lease outlives a few missed heartbeats; an expired lease means its
    # worker died, and the sweeper dispatches the step again (within lease + sweep seconds).
    lease_seconds: float = 15.0
    heartbeat_seconds: float = 5.0
    sweep_seconds: float = 5.0
    # A parked step that was signalled but whose re-send was never confirmed (its sender died
    # between storing the signal and sending) is sent again by the sweeper after this long.
    resume_grace_seconds: float = 30.0
    # A finished run's keys (record, journal, outputs, attempts, votes, budget, idempotency key)
    # expire after this many seconds; 0 keeps them. `legato prune` deletes earlier on demand.
    run_ttl: float = 7 * 24 * 3600
    # How often a worker's sweeper drops the runs index's entries of expired runs (at most as
    # often as it sweeps, LEGATO_SWEEP_SECONDS).
    prune_seconds: float = 60.0
    # A run with a step sent to a queue no live worker consumes shows it at once, and fails after
    # this long (before the stall recovery, which could not help it).
    unserved_seconds: float = 120.0
    stall_seconds: float = 300.0  # an unfinished run with no sign of life this long is recovered
    max_recoveries: int = 2  # ...this many times, then failed as stalled
    # A step whose model call is still failing transiently after its quick HTTP retries is sent
    # again as a whole task, later (2 s, 6 s, 18 s...), without holding a thread: an outage of
    # the model server is ridden out instead of failing the run.
    step_retries: int = 3
    step_retry_seconds: float = 2.0
    max_input_bytes: int = 1024 * 1024  # a job input's JSON size; larger ones are refused
    max_output_bytes: int = 1024 * 1024  # a step output's JSON size; larger fails the step
    # How deep `pipeline` steps may nest child runs (a child of a child ... of a top run).
    max_pipeline_depth: int = Field(8, ge=1)
    # The tenants file (legato.tenants): set, runs wait in Redis for their tenant's fair share
    # (legato.admission). The same file on producers and workers; empty: every run is sent at once.
    tenants_file: str = ""
    batch_size: int = 100  # a vote's members per task (run concurrently in it)
    batch_concurrency: int = 256  # a worker process's threads for those members
    # Control workers also consume Celery's default queue (`celery`), where producers that name
    # no queue publish; off when other Celery apps' workers share that queue.
    serve_default_queue: bool = True
    # Model aliases a spec names that the worker's models file lacks: "any" calls them with no
    # credential of the worker's; "configured" refuses them (pipeline/models/credentials.py).
    model_endpoints: Literal["any", "configured"] = "any"
    # The response cache's mode for runs whose pipeline does not say (`cache:`); an unknown value
    # is "off".
    cache: CacheMode = "off"
    # The hosts HTTP tools may call (comma-separated; `*.example.com` matches its subdomains);
    # empty allows none.
    http_tool_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    # Completion webhooks (pipeline/callbacks.py): the hosts they may go to (as for HTTP tools;
    # empty allows none), the secret that signs them — the worker's own, never in a message or
    # in Redis — and the timeout of one POST.
    webhook_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    webhook_secret: SecretStr = SecretStr("")
    webhook_timeout: float = 10.0
    # A run's callbacks are tried this many times each, the waits between tries doubling from
    # this many seconds (at most 10 minutes).
    callback_attempts: int = 10
    callback_retry_seconds: float = 2.0
    schedules_file: str = ""  # empty: <pipelines_dir>/schedules.yaml (`legato beat`)
    # Model steps stream their answers from the provider and publish the tokens on the run's
    # event stream (pipeline/events.py): a process's publisher writes what piled up every
    # `stream_flush_ms`, pipelined, and a step's last events ride its journal end. `watched`
    # (the default): only a step that begins while someone follows its run streams (its
    # begin reads the run's watched mark, in the round trip it makes anyway), so work nobody
    # watches pays nothing; `always` (1/true/yes/on): every step; `off` (0/false/no): none
    # (plain requests, no events; a watcher sees each step as it ends).
    stream: StreamMode = "watched"
    stream_flush_ms: float = 50.0
    stream_maxlen: int = 10000  # a run's stream keeps about this many newest events
    log_format: LogFormat = "text"  # "json": one JSON object a log line; anything else: text
    otel: bool = False  # trace with OpenTelemetry (1/true/yes/on)
    # The OpenAI-compatible API the example models.yaml points at (read there as
    # `${LEGATO_MODEL_BASE_URL}`); `legato demo` uses it instead of starting a model.
    model_base_url: str = ""
    # `legato serve` (the console, pipeline/console/): a bearer token, or a user and password
    # for basic auth; one is required unless it is started with --no-auth.
    console_token: SecretStr | None = None
    console_user: str = ""
    console_password: SecretStr | None = None
    # Origins whose pages may call the console's API from a browser (comma-separated); empty:
    # CORS off, only the console's own pages.
    console_cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    # The OpenTelemetry SDK's own names (no LEGATO_ prefix), read here with the rest.
    otel_service_name: str = Field(
        "legato", validation_alias=AliasChoices("otel_service_name", "OTEL_SERVICE_NAME"))
    otel_traces_exporter: str = Field(
        "otlp", validation_alias=AliasChoices("otel_traces_exporter", "OTEL_TRACES_EXPORTER"))

    @field_validator("model_endpoints", mode="before")
    @classmethod
    def _endpoints(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if value not in ("any", "configured"):
                raise ValueError(f"LEGATO_MODEL_ENDPOINTS={value!r}: expected any or configured")
        return value

    @field_validator("model_transport", mode="before")
    @classmethod
    def _transport(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if value not in MODEL_TRANSPORTS:
                raise ValueError(f"LEGATO_MODEL_TRANSPORT={value!r}: expected one of "
                                 f"{', '.join(MODEL_TRANSPORTS)}")
        return value

    @field_validator("tool_modules", mode="before")
    @classmethod
    def _modules(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("console_cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("http_tool_hosts", "webhook_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        return _comma_list(value, lower=True)

    @field_validator("cache", mode="before")
    @classmethod
    def _cache(cls, value: Any) -> Any:
        return value if value in CACHE_MODES else "off"

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format(cls, value: Any) -> Any:
        return "json" if isinstance(value, str) and value.lower() == "json" else "text"

    @field_validator("stream", mode="before")
    @classmethod
    def _stream(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "always" if value else "off"
        if isinstance(value, str):
            value = value.strip().lower()
            if value in _ON:
                return "always"
            if value in ("", "0", "false", "no", "off"):
                return "off"
        return value

    @field_validator("otel", mode="before")
    @classmethod
    def _otel(cls, value: Any) -> Any:
        return value.lower() in _ON if isinstance(value, str) else value

    @field_validator("otel_traces_exporter", mode="before")
    @classmethod
    def _exporter(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def models_path(self) -> Path:
        return Path(self.models_file) if self.models_file else self.pipelines_dir / "models.yaml"

    @property
    def schedules_path(self) -> Path:
        return (Path(self.schedules_file) if self.schedules_file
                else self.pipelines_dir / "schedules.yaml")

    @property
    def mcp_path(self) -> Path:
        return Path(self.mcp_file) if self.mcp_file else self.pipelines_dir / "mcp.yaml"

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any,
                                   *_: Any, **__: Any) -> tuple[Any, ...]:
        # `Settings(...)`: its arguments and the defaults only. The environment is read by
        # `from_env`, once, at an edge.
        return (init_settings,)

    @classmethod
    def from_env(cls) -> Settings:
        """Every `LEGATO_*` variable (and OTEL_SERVICE_NAME, OTEL_TRACES_EXPORTER) read now."""
        return cls(**EnvSettingsSource(cls)())


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of `settings` with `changes` (checked like the rest)."""
    return type(settings).model_validate({**settings.model_dump(), **changes})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings.from_env()
