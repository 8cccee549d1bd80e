"""What every provider's wire protocol shares: one POST, its errors mapped to Legato's types.

Transport failures (mapped by the transport, transport.py), 408, 429 and 5xx are
`TransientError` (with the server's reset hint, if it gives one); other 4xx are `PermanentError`,
a context-length refusal named as such. The protocols (openai_compat.py, anthropic.py) build the
request and parse the answer around `send`.
"""

from __future__ import annotations

from typing import Any

from legato.errors import PermanentError, TransientError
from legato.models.config import ModelConfig
from legato.models.credentials import redact
from legato.models.transport import Client, OnChunk, WireResponse, as_transport

_CONTEXT_HINTS = ("context length", "context_length", "maximum context", "too many tokens",
                  "prompt is too long", "context window")


def timeout(cfg: ModelConfig) -> float | None:
    """The model's own timeout, else None: the transport's default (LEGATO_HTTP_TIMEOUT), never
    "no timeout"."""
    return cfg.timeout if cfg.timeout else None


def retry_after(response: WireResponse, names: tuple[str, ...]) -> float | None:
    """Seconds the server asks us to wait, from the first of `names` that parses."""
    for name in names:
        value = response.header(name)
        if value:
            try:
                return float(value.rstrip("s"))
            except ValueError:
                continue
    return None


def error_message(response: WireResponse) -> str:
    try:
        body = response.json()
        return str(body.get("error", {}).get("message") or body)
    except (ValueError, AttributeError):
        return response.text[:300]


def permanent(status: int, model: str, message: str) -> PermanentError:
    """A non-retryable 4xx; a context-length refusal is named as such."""
    if any(h in message.lower() for h in _CONTEXT_HINTS):
        return PermanentError(f"context too long for {model} (HTTP {status}): {message}",
                              status_code=status)
    return PermanentError(f"HTTP {status} from {model}: {message}", status_code=status)


_NOT_SECRET = frozenset({"content-type", "accept", "anthropic-version", "x-legato-step",
                         "user-agent"})


def sent_secrets(headers: dict[str, str]) -> list[str]:
    """The header values of a request that may be credentials (and a bearer's bare token)."""
    values = []
    for name, value in headers.items():
        if name.lower() in _NOT_SECRET:
            continue
        values.append(value)
        scheme, _, token = value.partition(" ")
        if token and scheme.lower() in ("bearer", "basic", "token"):
            values.append(token)
    return values


def send(client: Client, cfg: ModelConfig, url: str, body: dict[str, Any],
         headers: dict[str, str], *, reset_headers: tuple[str, ...],
         on_chunk: OnChunk | None = None) -> Any:
    """POST `body`; return the answer's JSON, or raise TransientError / PermanentError.
    `on_chunk`: a streamed answer, whose body goes there as it arrives; then None is returned.

    Error texts are stored in run records and logged: the credentials this request carried (and
    anything shaped like one) are redacted from them, whatever the server echoed."""
    secrets = sent_secrets(headers)
    try:
        transport = as_transport(client)
        if on_chunk is None:  # a transport from before streaming need not know the argument
            response = transport.post(url, json=body, headers=headers, timeout=timeout(cfg))
        else:
            response = transport.post(url, json=body, headers=headers, timeout=timeout(cfg),
                                      on_chunk=on_chunk)
    except TransientError as exc:  # timeouts and connection failures, mapped by the transport
        clean = redact(str(exc), secrets)
        if clean == str(exc):
            raise
        raise TransientError(clean, status_code=exc.status_code,
                             retry_after=exc.retry_after) from None
    status = response.status
    if status in (408, 429) or status >= 500:
        raise TransientError(f"HTTP {status} from {cfg.model}: "
                             f"{redact(error_message(response), secrets)}",
                             status_code=status,
                             retry_after=retry_after(response, reset_headers))
    if status >= 400:
        raise permanent(status, cfg.model, redact(error_message(response), secrets))
    if on_chunk is not None:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise TransientError(f"malformed response from {cfg.model}: {exc!r}") from exc
