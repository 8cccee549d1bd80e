"""One Settings object, read from the environment (LEGATO_*) once, at the edges.

Library code takes arguments; only the CLI, the worker wiring and the client's defaults read this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, cast


def _env(name: str, default: str) -> str:
    return os.environ.get(f"LEGATO_{name}", default)


def _choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = _env(name, default).strip().lower()
    if value not in allowed:
        raise ValueError(f"LEGATO_{name}={value!r}: expected one of {', '.join(allowed)}")
    return value


ModelTransport = Literal["aiohttp", "httpx"]
MODEL_TRANSPORTS: tuple[ModelTransport, ...] = ("aiohttp", "httpx")


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = ""  # empty: same as redis_url
    pipelines_dir: Path = Path("pipelines")
    models_file: str = ""  # empty: <pipelines_dir>/models.yaml
    key_prefix: str = "legato"
    http_timeout: float = 60.0
    http_max_connections: int = 256
    # How a worker process makes model calls: "aiohttp" (one event-loop thread per process, pool
    # threads parked on futures; ~0.4 ms CPU a call) or "httpx" (one shared sync client, 2–9 ms
    # a call at 100–500 connections). See docs/benchmarks.md, "The model-call path".
    model_transport: ModelTransport = "aiohttp"
    tool_modules: tuple[str, ...] = ()
    # Durability: a step's lease outlives a few missed heartbeats; an expired lease means its
    # worker died, and the sweeper dispatches the step again (within lease + sweep seconds).
    lease_seconds: float = 15.0
    heartbeat_seconds: float = 5.0
    sweep_seconds: float = 5.0
    stall_seconds: float = 300.0  # an unfinished run with no sign of life this long is recovered
    max_recoveries: int = 2  # ...this many times, then failed as stalled
    # A step whose model call is still failing transiently after its quick HTTP retries is sent
    # again as a whole task, later (2 s, 6 s, 18 s...), without holding a thread: an outage of
    # the model server is ridden out instead of failing the run.
    step_retries: int = 3
    step_retry_seconds: float = 2.0
    max_input_bytes: int = 1024 * 1024  # a job input's JSON size; larger ones are refused
    max_output_bytes: int = 1024 * 1024  # a step output's JSON size; larger fails the step
    batch_size: int = 100  # a vote's members per task (run concurrently in it)
    batch_concurrency: int = 256  # a worker process's threads for those members
    serve_default_queue: bool = True  # control workers also consume Celery's `celery` queue
    # Model aliases a spec names that the worker's models file lacks: "any" calls them with no
    # credential of the worker's; "configured" refuses them (pipeline/models/credentials.py).
    model_endpoints: str = "any"

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def models_path(self) -> Path:
        return Path(self.models_file) if self.models_file else self.pipelines_dir / "models.yaml"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            redis_url=_env("REDIS_URL", cls.redis_url),
            broker_url=_env("BROKER_URL", ""),
            pipelines_dir=Path(_env("PIPELINES_DIR", "pipelines")),
            models_file=_env("MODELS_FILE", ""),
            key_prefix=_env("KEY_PREFIX", cls.key_prefix),
            http_timeout=float(_env("HTTP_TIMEOUT", str(cls.http_timeout))),
            http_max_connections=int(_env("HTTP_MAX_CONNECTIONS", str(cls.http_max_connections))),
            model_transport=cast(ModelTransport, _choice("MODEL_TRANSPORT", cls.model_transport,
                                                         MODEL_TRANSPORTS)),
            tool_modules=tuple(m for m in _env("TOOL_MODULES", "").split(",") if m.strip()),
            lease_seconds=float(_env("LEASE_SECONDS", str(cls.lease_seconds))),
            heartbeat_seconds=float(_env("HEARTBEAT_SECONDS", str(cls.heartbeat_seconds))),
            sweep_seconds=float(_env("SWEEP_SECONDS", str(cls.sweep_seconds))),
            stall_seconds=float(_env("STALL_SECONDS", str(cls.stall_seconds))),
            max_recoveries=int(_env("MAX_RECOVERIES", str(cls.max_recoveries))),
            step_retries=int(_env("STEP_RETRIES", str(cls.step_retries))),
            step_retry_seconds=float(_env("STEP_RETRY_SECONDS", str(cls.step_retry_seconds))),
            max_input_bytes=int(_env("MAX_INPUT_BYTES", str(cls.max_input_bytes))),
            max_output_bytes=int(_env("MAX_OUTPUT_BYTES", str(cls.max_output_bytes))),
            batch_size=int(_env("BATCH_SIZE", str(cls.batch_size))),
            batch_concurrency=int(_env("BATCH_CONCURRENCY", str(cls.batch_concurrency))),
            serve_default_queue=_env("SERVE_DEFAULT_QUEUE", "1").strip().lower()
            not in ("0", "false", "no", "off"),
            model_endpoints=_choice("MODEL_ENDPOINTS", cls.model_endpoints, ("any", "configured")),
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()
