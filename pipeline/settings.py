"""One Settings object, read from the environment (LEGATO_*) once, at the edges.

Library code takes arguments; only the CLI, the worker wiring and the client's defaults read this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(f"LEGATO_{name}", default)


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = ""  # empty: same as redis_url
    pipelines_dir: Path = Path("pipelines")
    models_file: str = ""  # empty: <pipelines_dir>/models.yaml
    key_prefix: str = "legato"
    http_timeout: float = 60.0
    http_max_connections: int = 256
    tool_modules: tuple[str, ...] = ()

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
            tool_modules=tuple(m for m in _env("TOOL_MODULES", "").split(",") if m.strip()),
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()
