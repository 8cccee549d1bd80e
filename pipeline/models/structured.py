"""Asking a model for an answer: plain text, or JSON checked against a schema and repaired.

When output is not JSON or fails the schema, the model is asked again with the validation error
appended, up to `max_repairs` times; each attempt is kept for the step record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from legato import schema as schemas
from legato.envelope import Usage
from legato.errors import OutputInvalid
from legato.models.config import ModelConfig
from legato.models.openai_compat import Completion, chat
from legato.models.transport import Client

# (messages, schema, params) -> one completion, its own retries and fallbacks included
Complete = Callable[[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any] | None],
                    Completion]


@dataclass
class Answer:
    output: Any
    usage: Usage
    attempts: list[dict[str, Any]] = field(default_factory=list)


def _parse(text: str, output_schema: dict[str, Any]) -> Any:
    cleaned = text.strip()
    if cleaned.startswith("```"):  # some models fence JSON even when asked not to
        cleaned = cleaned.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(cleaned)
    except json.JSONDecodeError as exc:
        raise OutputInvalid(f"output is not valid JSON ({exc.msg} at char {exc.pos})") from exc
    try:
        return schemas.validate(output_schema, value)
    except ValidationError as exc:
        raise OutputInvalid(f"output does not match the schema: {schemas.describe(exc)}") from exc


def ask(
    client: Client,
    cfg: ModelConfig,
    prompt: str,
    *,
    system: str | None = None,
    output_schema: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    max_repairs: int = 2,
    step_tag: str | None = None,
    complete: Complete | None = None,
) -> Answer:
    """`complete` makes the calls (the gateway); by default `chat` on `client` and `cfg`."""
    if complete is None:
        def complete(m: list[dict[str, Any]], s: dict[str, Any] | None,
                     p: dict[str, Any] | None) -> Completion:
            return chat(client, cfg, m, schema=s, params=p, step_tag=step_tag)
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    usage = Usage()
    attempts: list[dict[str, Any]] = []
    for attempt in range(max_repairs + 1):
        completion = complete(messages, output_schema, params)
        usage = usage + completion.usage
        if output_schema is None:
            return Answer(completion.text, usage, attempts)
        try:
            return Answer(_parse(completion.text, output_schema), usage, attempts)
        except OutputInvalid as exc:
            attempts.append({"attempt": attempt + 1, "error": str(exc)})
            if attempt == max_repairs:
                failed = OutputInvalid(f"{exc} (after {max_repairs} repair attempts)")
                failed.attempts = attempts  # type: ignore[attr-defined]
                raise failed from exc
            messages = [
                *messages,
                {"role": "assistant", "content": completion.text},
                {"role": "user", "content": f"That reply was rejected: {exc}. Reply again with "
                 "only a JSON value that matches the schema."},
            ]
    raise AssertionError("unreachable")
