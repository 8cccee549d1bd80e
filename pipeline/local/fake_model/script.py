"""The script: canned replies (`rules`) and injected faults (`faults`), loaded and checked.

Validation errors are ValueErrors whose message starts with the path of the bad field,
e.g. ``faults[1].code: expected an integer in 400..599, got 200``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from legato.local.fake_model.prompt import ChatRequest

MATCH_KEYS = ("model", "contains", "system_contains", "any_contains")
FAULT_KINDS = ("latency", "status", "malformed", "hang", "drop", "stream_drop", "stream_slow",
               "stream_malformed")
# Faults that only streaming requests (`"stream": true`) can meet; other requests never match them.
STREAM_FAULTS = ("stream_drop", "stream_slow", "stream_malformed")
_FAULT_KEYS = {
    "latency": {"ms", "jitter_ms"},
    "status": {"code", "retry_after", "body"},
    "malformed": set(),
    "hang": {"seconds"},
    "drop": set(),
    "stream_drop": {"after"},  # close the connection after `after` events
    "stream_slow": {"ms"},  # wait `ms` before each event (adds up, like latency)
    "stream_malformed": {"after"},  # event number `after` (0-based) is not JSON
}
_COMMON_FAULT_KEYS = {"kind", "match", "times", "every"}


@dataclass(frozen=True)
class Match:
    model: str | None = None
    contains: str | None = None  # substring of the last user message
    system_contains: str | None = None  # substring of the system/developer messages
    any_contains: str | None = None  # substring of any message

    def matches(self, req: ChatRequest) -> bool:
        if self.model is not None and req.model != self.model:
            return False
        if self.contains is not None and self.contains not in req.last_user:
            return False
        if self.system_contains is not None and self.system_contains not in req.system:
            return False
        return self.any_contains is None or any(self.any_contains in t for _, t in req.texts)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Rule:
    match: Match
    reply: Any  # str | dict | list | None (None only with tool_calls)
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class Fault:
    kind: str
    match: Match
    times: int | None = None
    every: int | None = None
    ms: float = 0.0
    jitter_ms: float = 0.0
    code: int = 500
    retry_after: float | None = None
    body: str | None = None
    seconds: float = 3600.0
    after: int = 1


@dataclass(frozen=True)
class Script:
    seed: int = 0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    models: tuple[str, ...] = ()
    chunk_chars: int = 8  # a streamed answer's content comes this many characters an event
    rules: tuple[Rule, ...] = ()
    faults: tuple[Fault, ...] = ()


def _fail(path: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{path}: expected {expected}, got {value!r}")


def _mapping(value: Any, path: str, allowed: set[str] | tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, "a mapping", value)
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")
    return value


def _number(value: Any, path: str, *, integer: bool = False, low: float = 0) -> Any:
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or value < low:
        raise _fail(path, f"{'an integer' if integer else 'a number'} >= {low:g}", value)
    return value


def _integer(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, "an integer", value)
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _fail(path, "a string", value)
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(path, "a list", value)
    return value


def _match(value: Any, path: str) -> Match:
    data = _mapping({} if value is None else value, path, MATCH_KEYS)
    return Match(**{k: _string(v, f"{path}.{k}") for k, v in data.items()})


def _rule(value: Any, path: str) -> Rule:
    data = _mapping(value, path, ("match", "reply", "tool_calls"))
    if "reply" not in data and "tool_calls" not in data:
        raise ValueError(f"{path}: needs 'reply' or 'tool_calls'")
    reply = data.get("reply")
    if reply is not None and not isinstance(reply, str | dict | list):
        raise _fail(f"{path}.reply", "a string, mapping or list", reply)
    calls = []
    for i, call in enumerate(_list(data.get("tool_calls", []), f"{path}.tool_calls")):
        cpath = f"{path}.tool_calls[{i}]"
        c = _mapping(call, cpath, ("name", "arguments"))
        arguments = c.get("arguments", {})
        if not isinstance(arguments, dict):
            raise _fail(f"{cpath}.arguments", "a mapping", arguments)
        calls.append(ToolCall(_string(c.get("name"), f"{cpath}.name"), arguments))
    return Rule(_match(data.get("match"), f"{path}.match"), reply, tuple(calls))


def _fault(value: Any, path: str) -> Fault:
    if not isinstance(value, Mapping) or value.get("kind") not in FAULT_KINDS:
        kind = value.get("kind") if isinstance(value, Mapping) else value
        raise _fail(f"{path}.kind", f"one of {', '.join(FAULT_KINDS)}", kind)
    kind = value["kind"]
    data = _mapping(value, path, tuple(sorted(_COMMON_FAULT_KEYS | _FAULT_KEYS[kind])))
    fields: dict[str, Any] = {"kind": kind, "match": _match(data.get("match"), f"{path}.match")}
    if "times" in data:
        fields["times"] = _number(data["times"], f"{path}.times", integer=True)
    if "every" in data:
        fields["every"] = _number(data["every"], f"{path}.every", integer=True, low=1)
    for key in ("ms", "jitter_ms", "retry_after", "seconds"):
        if key in data:
            fields[key] = _number(data[key], f"{path}.{key}")
    if "after" in data:
        fields["after"] = _number(data["after"], f"{path}.after", integer=True)
    if "code" in data:
        code = data["code"]
        if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
            raise _fail(f"{path}.code", "an integer in 400..599", code)
        fields["code"] = code
    if "body" in data:
        fields["body"] = _string(data["body"], f"{path}.body")
    return Fault(**fields)


def validate_script(raw: Mapping[str, Any] | None) -> Script:
    """Check a script mapping and turn it into a Script; raises ValueError naming the bad field."""
    keys = ("seed", "latency_ms", "jitter_ms", "chunk_chars", "models", "rules", "faults")
    data = _mapping({} if raw is None else raw, "script", keys)
    models = tuple(
        _string(m, f"models[{i}]") for i, m in enumerate(_list(data.get("models", []), "models"))
    )
    rules = _list(data.get("rules") or [], "rules")
    faults = _list(data.get("faults") or [], "faults")
    return Script(
        seed=_integer(data.get("seed", 0), "seed"),
        latency_ms=_number(data.get("latency_ms", 0), "latency_ms"),
        jitter_ms=_number(data.get("jitter_ms", 0), "jitter_ms"),
        models=models,
        chunk_chars=_number(data.get("chunk_chars", 8), "chunk_chars", integer=True, low=1),
        rules=tuple(_rule(r, f"rules[{i}]") for i, r in enumerate(rules)),
        faults=tuple(_fault(f, f"faults[{i}]") for i, f in enumerate(faults)),
    )


def load_script(path: str | Path) -> dict[str, Any]:
    """Read a script from a .yaml/.yml or .json file, validate it, and return it as a dict."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise ValueError(f"{p}: script must be a .yaml, .yml or .json file")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{p}: cannot parse script: {exc}") from None
    data = {} if data is None else data
    try:
        validate_script(data)
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None
    return dict(data)
