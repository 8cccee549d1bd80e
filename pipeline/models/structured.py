"""Asking a model for an answer: plain text, or JSON checked against a schema and repaired.

When output is not JSON or fails the schema, the model is asked again with the validation error
appended, up to `max_repairs` times; each rejected answer is kept for the step record (`Repair`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from legato import schema as schemas
from legato.envelope import Message, Repair, StepRef, Usage
from legato.errors import OutputInvalid
from legato.models.config import ModelConfig
from legato.models.openai_compat import Completion, chat
from legato.models.transport import Client

# (messages, schema, params) -> one completion, its own retries and fallbacks included. The
# messages go as their wire dicts until the callers (pipeline/kinds.py) take `list[Message]`.
Complete = Callable[[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any] | None],
                    Completion]


@dataclass
class Answer:
    output: Any
    usage: Usage
    attempts: list[Repair] = field(default_factory=list)


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
    step: StepRef | None = None,
    step_tag: str | None = None,
    complete: Complete | None = None,
) -> Answer:
    """`complete` makes the calls (the gateway); by default `chat` on `client` and `cfg`.
    `step` names the step for the model's `X-Legato-Step` header (or a bare `step_tag`)."""
    tag = step.tag if step is not None else step_tag
    if complete is None:
        def complete(m: list[dict[str, Any]], s: dict[str, Any] | None,
                     p: dict[str, Any] | None) -> Completion:
            return chat(client, cfg, m, schema=s, params=p, step_tag=tag)
    messages: list[Message] = []
    if system:
        messages.append(Message(role="system", content=system))
    messages.append(Message(role="user", content=prompt))
    usage = Usage()
    attempts: list[Repair] = []
    for attempt in range(max_repairs + 1):
        completion = complete([m.wire() for m in messages], output_schema, params)
        usage = usage + completion.usage
        if output_schema is None:
            return Answer(completion.text, usage, attempts)
        try:
            return Answer(_parse(completion.text, output_schema), usage, attempts)
        except OutputInvalid as exc:
            attempts.append(Repair(attempt=attempt + 1, error=str(exc)))
            if attempt == max_repairs:
                failed = OutputInvalid(f"{exc} (after {max_repairs} repair attempts)")
                failed.attempts = attempts  # type: ignore[attr-defined]
                raise failed from exc
            messages = [
                *messages,
                Message(role="assistant", content=completion.text),
                Message(role="user", content=f"That reply was rejected: {exc}. Reply again "
                        "with only a JSON value that matches the schema."),
            ]
    raise AssertionError("unreachable")
