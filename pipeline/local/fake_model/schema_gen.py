"""A deterministic instance of a JSON Schema, seeded by the prompt.

Covers what structured-output schemas use: object/properties/required, string (with a few
formats, min/maxLength), integer/number (bounds), boolean, null, array (min/maxItems, two
items by default), enum, const, anyOf/oneOf (first non-null option), allOf (shallow merge),
type lists / nullable, and local ``$ref`` into ``$defs``/``definitions``.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from typing import Any

MAX_DEPTH = 10  # past this, optional parts are left out so recursive schemas stay finite
_FORMATS = {
    "date-time": lambda h: f"2024-01-{1 + h % 28:02d}T12:00:00Z",
    "date": lambda h: f"2024-01-{1 + h % 28:02d}",
    "time": lambda h: f"{h % 24:02d}:00:00",
    "email": lambda h: f"user{h % 1000}@example.com",
    "uri": lambda h: f"https://example.com/{h % 1000}",
    "url": lambda h: f"https://example.com/{h % 1000}",
    "uuid": lambda h: str(uuid.UUID(int=(h << 64) | h)),
    "ipv4": lambda h: f"192.0.2.{h % 255}",
}


def _is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **extra}
    if "properties" in base and "properties" in extra:
        merged["properties"] = {**base["properties"], **extra["properties"]}
    if "required" in base and "required" in extra:
        merged["required"] = list(dict.fromkeys([*base["required"], *extra["required"]]))
    return merged


class _Generator:
    def __init__(self, root: dict[str, Any], seed: str, prompt: str) -> None:
        self.root = root
        self.seed = seed
        self.snippet = " ".join(prompt.split()[:6])[:40]

    def h(self, path: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{self.seed}|{path}".encode()).digest()[:8], "big")

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise ValueError(f"only local $ref is supported, got {ref!r}")
        node: Any = self.root
        for part in filter(None, ref[1:].split("/")):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def value(self, schema: Any, path: str, label: str, depth: int) -> Any:
        if not isinstance(schema, dict):  # `true` / `{}`-like: anything goes
            return self.string({}, path, label)
        if "$ref" in schema:
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.value(_merge(self.resolve(schema["$ref"]), rest), path, label, depth + 1)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            options = schema["enum"]
            return options[self.h(path) % len(options)]
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                options = schema[key]
                if depth > MAX_DEPTH and any(_is_null(o) for o in options):
                    return None
                pick = next((o for o in options if not _is_null(o)), options[0])
                base = {k: v for k, v in schema.items() if k != key}
                if isinstance(pick, dict) and "$ref" in pick:
                    pick = _merge(self.resolve(pick["$ref"]), {})
                return self.value(_merge(base, pick), path, label, depth + 1)
        if schema.get("allOf"):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                resolved = self.resolve(part["$ref"]) if "$ref" in part else part
                merged = _merge(merged, resolved)
            return self.value(merged, path, label, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((t for t in kind if t != "null"), "null")
        if kind is None:
            keys = set(schema)
            object_keys = {"properties", "required", "additionalProperties"}
            kind = "object" if keys & object_keys else "array" if "items" in keys else "string"
        make = getattr(self, f"make_{kind}", None)
        if make is None:
            return self.string(schema, path, label)
        return make(schema, path, label, depth)

    def string(self, schema: dict[str, Any], path: str, label: str) -> str:
        fmt = _FORMATS.get(schema.get("format", ""))
        if fmt:
            text = fmt(self.h(path))
        else:  # "title: first words of the prompt 2" (array positions keep items distinct)
            ordinals = " ".join(str(int(p) + 1) for p in path.split("/") if p.isdigit())
            head = f"{label}:" if self.snippet else label
            text = " ".join(filter(None, (head, self.snippet, ordinals)))
        text += "x" * max(0, int(schema.get("minLength", 0)) - len(text))
        return text[: schema["maxLength"]] if "maxLength" in schema else text

    def make_string(self, schema: dict[str, Any], path: str, label: str, depth: int) -> str:
        return self.string(schema, path, label)

    def _bounds(self, schema: dict[str, Any]) -> tuple[float | None, float | None, bool, bool]:
        low, high = schema.get("minimum"), schema.get("maximum")
        ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        open_low = open_high = False
        if isinstance(ex_low, bool):  # draft 4 style
            open_low = ex_low
        elif ex_low is not None:
            low, open_low = ex_low, True
        if isinstance(ex_high, bool):
            open_high = ex_high
        elif ex_high is not None:
            high, open_high = ex_high, True
        return low, high, open_low, open_high

    def make_integer(self, schema: dict[str, Any], path: str, label: str, depth: int) -> int:
        low, high, open_low, open_high = self._bounds(schema)
        lo = None if low is None else (math.floor(low) + 1 if open_low else math.ceil(low))
        hi = None if high is None else (math.ceil(high) - 1 if open_high else math.floor(high))
        if lo is None:
            lo = 1 if hi is None else hi - 100
        hi = lo + 99 if hi is None else hi
        if hi < lo:
            return lo
        value = lo + self.h(path) % (hi - lo + 1)
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            value = -(-value // step) * step
            value = value - step if value > hi else value
        return value

    def make_number(self, schema: dict[str, Any], path: str, label: str, depth: int) -> float:
        low, high, _, _ = self._bounds(schema)
        lo = float(low) if low is not None else (float(high) - 100 if high is not None else 0.0)
        hi = float(high) if high is not None else lo + 100
        value = lo + (hi - lo) * ((self.h(path) % 9) + 1) / 10  # strictly inside (lo, hi)
        return round(value, 2) if hi - lo >= 0.1 else value

    def make_boolean(self, schema: dict[str, Any], path: str, label: str, depth: int) -> bool:
        return self.h(path) % 2 == 0

    def make_null(self, schema: dict[str, Any], path: str, label: str, depth: int) -> None:
        return None

    def make_array(self, schema: dict[str, Any], path: str, label: str, depth: int) -> list[Any]:
        count = max(int(schema.get("minItems", 0)), 2 if depth <= MAX_DEPTH else 0)
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        items = schema.get("items", {})
        prefix = schema.get("prefixItems") or (items if isinstance(items, list) else [])
        rest = items if isinstance(items, dict) else {}
        return [
            self.value(prefix[i] if i < len(prefix) else rest, f"{path}/{i}", label, depth + 1)
            for i in range(count)
        ]

    def make_object(self, schema: dict[str, Any], path: str, label: str, depth: int) -> Any:
        required = list(schema.get("required", []))
        out: dict[str, Any] = {}
        for name, sub in (schema.get("properties") or {}).items():
            if depth <= MAX_DEPTH or name in required:
                out[name] = self.value(sub, f"{path}/{name}", name, depth + 1)
        extra = schema.get("additionalProperties")
        for name in required:
            if name not in out:
                sub = extra if isinstance(extra, dict) else {}
                out[name] = self.value(sub, f"{path}/{name}", name, depth + 1)
        return out


def instance(schema: dict[str, Any], seed: str, prompt: str = "") -> Any:
    """A value valid against `schema`, the same for the same (schema, seed, prompt)."""
    return _Generator(schema, seed, prompt).value(schema, "#", "value", 0)
