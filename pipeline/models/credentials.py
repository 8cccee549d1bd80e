"""Which endpoint gets which credential: decided by the worker's own models file, never a spec.

A pipeline's spec is written by a producer, which is less trusted than the worker that runs it
(docs/security.md): it names model aliases, and its embedded `ModelConfig`s say where it *thinks*
they point. At call time the gateway binds each alias through `Credentials`:

- an alias in the worker's models file is called at the worker's `base_url` and `protocol`, with
  the worker's `api_key_env` and `headers` — whatever the spec embedded for them;
- an alias only the spec knows (an ad-hoc endpoint) is called without any credential of the
  worker's: its `api_key_env` is honoured only if the worker's file pairs that variable with the
  same base URL, its headers are sent as written (never expanded). With
  `LEGATO_MODEL_ENDPOINTS=configured` such aliases are refused instead.

`${VAR}` in a models file's `headers` is expanded here, in the calling process, at call time
(the loader leaves header values as written, so a header secret is never pinned into a spec).
`redact` removes the values of those credentials, and anything shaped like an Authorization
header or an API key, from text that will be stored or logged (provider errors that echo a key).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from legato.errors import PermanentError
from legato.models.config import ModelConfig

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MIN_SECRET = 6  # shorter values are not redacted by value (they would mangle ordinary text)
REDACTED = "[redacted]"
# Authorization-like strings, and what of each match is kept: bearer tokens, key headers (in
# any quoting), common key shapes, the password in a URL.
_SHAPES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + REDACTED),
    (re.compile(r"(?i)((?:proxy-)?authorization|x-api-key|api[-_]?key|x-goog-api-key)"
                r"([\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic)\s+)?[^\s\"',;}]{4,}"),
     r"\1\2" + REDACTED),
    (re.compile(r"\b(?:sk|pk|rk|ghp|gho|xox[abp])[-_][A-Za-z0-9_-]{12,}"), REDACTED),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), REDACTED),
    (re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"), REDACTED),
]


def expand(text: str) -> str:
    """`${NAME}` / `${NAME:-default}` from this process's environment."""
    return _ENV_REF.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), text)


def _origin(url: str) -> str:
    return url.rstrip("/")


class Credentials:
    """The credential policy of one process: its own models (None: trust the configs given)."""

    def __init__(self, models: dict[str, ModelConfig] | None, *, adhoc: bool = True) -> None:
        self.models = models
        self.adhoc = adhoc
        self._pairs = {(_origin(m.base_url), m.api_key_env)
                       for m in (models or {}).values() if m.api_key_env}
        # Bound configs by (alias, the config given): specs are cached for good by workers, so
        # the same config object comes back call after call (its copy is made once).
        self._bound: dict[tuple[str, int], tuple[ModelConfig, ModelConfig]] = {}
        self._secrets: list[str] | None = None

    @classmethod
    def trusting(cls) -> Credentials:
        """Library use, no producers: a config's own key and headers are used as they are."""
        return cls(None)

    @classmethod
    def from_file(cls, path: Path, *, adhoc: bool = True) -> Credentials:
        """The worker's models file (no file: no alias has a credential)."""
        from legato.loader import load_models  # the loader imports the model layer's types

        models = load_models(path) if path.is_file() else {}
        return cls(models, adhoc=adhoc)

    def bind(self, alias: str, cfg: ModelConfig) -> ModelConfig:
        """The config to call `alias` with: endpoint and credentials as this process allows,
        headers expanded. Raises PermanentError for an alias this process refuses."""
        seen = self._bound.get((alias, id(cfg)))
        if seen is not None and seen[0] is cfg:
            return seen[1]
        bound = self._bind(alias, cfg)
        if len(self._bound) > 4096:  # many ad-hoc specs: start over rather than grow
            self._bound.clear()
        self._bound[(alias, id(cfg))] = (cfg, bound)
        return bound

    def _bind(self, alias: str, cfg: ModelConfig) -> ModelConfig:
        if self.models is None:
            return cfg.model_copy(update={"headers": _expanded(cfg.headers)})
        own = self.models.get(alias)
        if own is not None:
            return cfg.model_copy(update={
                "base_url": own.base_url, "protocol": own.protocol,
                "api_key_env": own.api_key_env, "headers": _expanded(own.headers)})
        if not self.adhoc:
            raise PermanentError(f"model alias {alias!r} is not in this worker's models file "
                                 "(LEGATO_MODEL_ENDPOINTS=configured)")
        if cfg.api_key_env and (_origin(cfg.base_url), cfg.api_key_env) not in self._pairs:
            raise PermanentError(
                f"model alias {alias!r}: this worker's models file does not pair "
                f"api_key_env {cfg.api_key_env!r} with that base_url; name an alias the worker "
                "has, or drop api_key_env")
        return cfg  # the spec's own headers, as written: nothing of the worker's is expanded

    def secrets(self) -> list[str]:
        """The credential values this process's models file can send (to redact them), longest
        first. Read once, like the file: every log line asks."""
        if self._secrets is None:
            values: list[str] = []
            for m in (self.models or {}).values():
                if m.api_key_env:
                    values.append(os.environ.get(m.api_key_env, ""))
                values.extend(_expanded(m.headers).values())
            self._secrets = sorted({v for v in values if len(v) >= _MIN_SECRET}, key=len,
                                   reverse=True)
        return self._secrets


def _expanded(headers: dict[str, str]) -> dict[str, str]:
    return {name: expand(value) for name, value in headers.items()}


_lock = threading.Lock()
_process: Credentials | None = None


def for_process() -> Credentials:
    """This process's policy, from its settings' models file (read once)."""
    global _process
    if _process is None:
        with _lock:
            if _process is None:
                from legato.settings import get_settings

                s = get_settings()
                _process = Credentials.from_file(s.models_path,
                                                 adhoc=s.model_endpoints == "any")
    return _process


def redact(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """`text` without the given secret values and without Authorization-like strings."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= _MIN_SECRET:
            text = text.replace(secret, REDACTED)
    if _may_be_shaped(text):
        for shape, replacement in _SHAPES:
            text = shape.sub(replacement, text)
    return text


def _may_be_shaped(text: str) -> bool:
    """False only if no shape can match: each needs one of these substrings. Every worker log
    line is redacted, and five regex passes cost ~20 µs a line; these checks, ~1 µs."""
    low = text.lower()
    return ("bearer" in low or "authorization" in low or ("api" in low and "key" in low)
            or "k-" in text or "k_" in text or "ghp" in text or "gho" in text
            or "xox" in text or "AKIA" in text or ("://" in text and "@" in text))


class RedactingFilter(logging.Filter):
    """A log filter: every record's message redacted (this process's credentials, key shapes)."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._secrets if self._secrets is not None else _safe_secrets()
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is not ours to fix
            return True
        clean = redact(message, secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None or record.exc_text:
            formatted = record.exc_text or logging.Formatter().formatException(
                record.exc_info)  # type: ignore[arg-type]
            cleaned = redact(formatted, secrets)
            if cleaned != formatted:
                record.exc_text = cleaned
        return True


def _safe_secrets() -> list[str]:
    try:
        return for_process().secrets()
    except Exception:  # noqa: BLE001 - logging must not fail on a bad models file
        return []


def install_log_redaction(logger: logging.Logger | None = None, **_: Any) -> None:
    """Put a RedactingFilter on a logger's handlers (Celery's setup-logger hooks)."""
    log_filter = RedactingFilter()
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(log_filter)
