"""JSON Schema (the subset pipelines use) -> a pydantic validator.

Pipelines declare input and output schemas as JSON Schema, since that is what model APIs take for
structured output. Validation is done by pydantic: each schema becomes a TypeAdapter once.
Supported: type (incl. lists of types), properties, required, additionalProperties: false, enum,
const, items, min/maxItems, min/maxLength, pattern, minimum/maximum, anyOf/oneOf, $ref into $defs.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

_SCALARS: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "null": type(None),
}


# Keywords that constrain values in ways this subset cannot check: refuse rather than ignore.
_UNSUPPORTED = frozenset({"allOf", "not", "if", "then", "else", "patternProperties",
                          "dependentRequired", "dependentSchemas"})


class SchemaProblem(ValueError):
    """A schema uses something this subset does not support, or is malformed."""


def _python_type(schema: Any, defs: dict[str, Any], name: str) -> Any:
    if schema is True or schema == {}:
        return Any
    if not isinstance(schema, dict):
        raise SchemaProblem(f"{name}: a schema must be an object, got {schema!r}")
    unsupported = _UNSUPPORTED.intersection(schema)
    if unsupported:
        raise SchemaProblem(f"{name}: unsupported keyword(s) {sorted(unsupported)}")
    if "$ref" in schema:
        ref = schema["$ref"]
        key = ref.rsplit("/", 1)[-1]
        if key not in defs:
            raise SchemaProblem(f"{name}: unresolved $ref {ref!r}")
        return _python_type(defs[key], defs, key)
    if "enum" in schema:
        return Literal[tuple(schema["enum"])]
    if "const" in schema:
        return Literal[schema["const"]]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = tuple(_python_type(s, defs, name) for s in schema[key])
            return Union[options]  # noqa: UP007 - built at run time
    kind = schema.get("type")
    if isinstance(kind, list):
        return Union[tuple(_python_type({**schema, "type": k}, defs, name) for k in kind)]  # noqa: UP007
    if kind == "object" or (kind is None and "properties" in schema):
        return _object_model(schema, defs, name)
    if kind == "array":
        item = _python_type(schema.get("items", {}), defs, f"{name}_item")
        return Annotated[
            list[item],  # type: ignore[valid-type]
            Field(min_length=schema.get("minItems"), max_length=schema.get("maxItems")),
        ]
    if kind in _SCALARS:
        constraints: dict[str, Any] = {
            "min_length": schema.get("minLength"),
            "max_length": schema.get("maxLength"),
            "pattern": schema.get("pattern"),
            "ge": schema.get("minimum"),
            "le": schema.get("maximum"),
        }
        constraints = {k: v for k, v in constraints.items() if v is not None}
        base = _SCALARS[kind]
        if kind == "number":
            base = Union[int, float]  # noqa: UP007 - JSON does not tell 1 from 1.0
        return Annotated[base, Field(**constraints)] if constraints else base
    if kind is None:
        return Any
    raise SchemaProblem(f"{name}: unsupported type {kind!r}")


def _object_model(schema: dict[str, Any], defs: dict[str, Any], name: str) -> Any:
    properties = schema.get("properties", {})
    if not properties:
        return dict[str, Any]
    required = set(schema.get("required", []))
    unknown = required - set(properties)
    if unknown:
        raise SchemaProblem(f"{name}: required names unknown properties {sorted(unknown)}")
    fields: dict[str, Any] = {}
    for prop, sub in properties.items():
        annotation = _python_type(sub, defs, f"{name}.{prop}")
        if prop in required:
            fields[prop] = (annotation, Field(alias=prop))
        else:
            fields[prop] = (Optional[annotation], Field(default=None, alias=prop))  # noqa: UP045
    config = ConfigDict(populate_by_name=True, extra="allow")
    if schema.get("additionalProperties") is False:
        config["extra"] = "forbid"
    safe = "".join(c if c.isalnum() else "_" for c in name) or "Model"
    return create_model(safe, __config__=config, **_safe_fields(fields))


def _safe_fields(fields: dict[str, Any]) -> dict[str, Any]:
    # Property names may clash with BaseModel attributes or not be identifiers: rename, keep alias.
    out = {}
    for i, (prop, spec) in enumerate(fields.items()):
        ident = prop if prop.isidentifier() and not hasattr(BaseModel, prop) else f"field_{i}"
        out[ident] = spec
    return out


@lru_cache(maxsize=512)
def _adapter(schema_json: str) -> TypeAdapter[Any]:
    schema = json.loads(schema_json)
    defs = {**schema.get("$defs", {}), **schema.get("definitions", {})}
    return TypeAdapter(_python_type(schema, defs, schema.get("title", "Output")))


def check_schema(schema: dict[str, Any]) -> None:
    """Raise SchemaProblem if `schema` cannot be turned into a validator."""
    _adapter(json.dumps(schema, sort_keys=True))


def validate(schema: dict[str, Any], value: Any) -> Any:
    """Check `value` against `schema` and return it unchanged. Raises ValidationError.

    Strict: the value is returned as it came, so `"3"` must not pass for an integer, nor `1` for
    a boolean, as pydantic's lax mode would let them.
    """
    _adapter(json.dumps(schema, sort_keys=True)).validate_python(value, strict=True)
    return value


def describe(error: ValidationError) -> str:
    """A short, readable list of what failed, e.g. `topic: field required; n: not an int`."""
    parts = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"] if not str(p).startswith("function-"))
        parts.append(f"{loc or '(root)'}: {item['msg']}")
    return "; ".join(parts)
