"""A content-addressed model response cache in Redis, for the same result on Tuesday as on Monday.

The key is a hash of what decides a response: protocol, model, messages, params (after the
deterministic defaults), schema and tools. Modes: `off`; `read-write` (a hit answers, a miss is
called and stored); `replay` (a hit answers, a miss is an error: nothing reaches a model).
Key: `<prefix>:cache:<sha256>` (JSON: text, usage, finish_reason, tool_calls, and `seconds`: how
long the recorded call took, so a hit can say what it saved).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from legato.envelope import Messages, ToolCall, Usage, as_messages
from legato.keys import Keys
from legato.models.config import ModelConfig
from legato.models.openai_compat import Completion

Mode = Literal["off", "read-write", "replay"]
MODES: tuple[str, ...] = ("off", "read-write", "replay")


def cache_key(cfg: ModelConfig, messages: Messages, *,
              schema: dict[str, Any] | None, params: dict[str, Any] | None,
              tools: list[dict[str, Any]] | None = None) -> str:
    merged = {"temperature": 0, "seed": 0, **cfg.params, **(params or {})}
    # A message's wire form is the keys it was made with: the key is what it was before types.
    identity = {"protocol": cfg.protocol, "model": cfg.model,
                "messages": [m.wire() for m in as_messages(messages)],
                "params": merged, "schema": schema, "tools": tools,
                "structured_output": cfg.structured_output if schema else None}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ResponseCache:
    def __init__(self, redis: Any, prefix: str = "legato", ttl: int | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.ttl = ttl

    def _key(self, digest: str) -> str:
        return self.keys.cache(digest)

    def get(self, digest: str) -> Completion | None:
        hit = self.lookup(digest)
        return hit[0] if hit is not None else None

    def lookup(self, digest: str) -> tuple[Completion, float] | None:
        """The recorded response and how many seconds the recorded call took."""
        raw = self.redis.get(self._key(digest))
        if raw is None:
            return None
        data = json.loads(raw)
        completion = Completion(text=data["text"], usage=Usage.model_validate(data["usage"]),
                                finish_reason=data.get("finish_reason"),
                                tool_calls=tuple(ToolCall.model_validate(c)
                                                 for c in data.get("tool_calls") or ()))
        return completion, float(data.get("seconds") or 0.0)

    def put(self, digest: str, completion: Completion, seconds: float = 0.0) -> None:
        data = {"text": completion.text, "usage": completion.usage.model_dump(),
                "finish_reason": completion.finish_reason, "seconds": round(seconds, 6),
                "tool_calls": [c.model_dump(mode="json") for c in completion.tool_calls]}
        self.redis.set(self._key(digest), json.dumps(data, ensure_ascii=False), ex=self.ttl)
