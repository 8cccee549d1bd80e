"""The JSON Schema subset pipelines use, validated by pydantic."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field, ValidationError

from legato import schema
from legato.schema import SchemaProblem, check_schema, describe, validate


class Address(BaseModel):
    city: str
    zip: str | None = None


class Person(BaseModel):
    name: str
    age: int = Field(ge=0)
    tags: list[str] = Field(default_factory=list, max_length=3)
    home: Address
    others: list[Address] = []
    role: Literal["admin", "user"] = "user"


PERSON = Person.model_json_schema()  # uses $defs and $ref for Address
OBJ = {
    "type": "object",
    "properties": {"topic": {"type": "string"}, "n": {"type": "integer"}},
    "required": ["topic"],
}


def _error(schema_: dict[str, Any], value: Any) -> str:
    with pytest.raises(ValidationError) as info:
        validate(schema_, value)
    return describe(info.value)


def test_validate_returns_the_value_unchanged() -> None:
    value = {"name": "Ada", "age": 36, "home": {"city": "London"}, "extra": [1, 2]}
    assert validate(PERSON, value) is value
    assert value == {"name": "Ada", "age": 36, "home": {"city": "London"}, "extra": [1, 2]}


def test_required_properties() -> None:
    assert validate(OBJ, {"topic": "x"}) == {"topic": "x"}
    assert _error(OBJ, {"n": 1}) == "topic: Field required"


@pytest.mark.parametrize(
    "kind, good, bad",
    [
        ("string", "s", 1),
        ("integer", 3, "3"),
        ("integer", -2, True),
        ("integer", 0, 1.5),
        ("number", 1.5, "1.5"),
        ("number", 2, True),
        ("boolean", False, 1),
        ("boolean", True, "true"),
        ("null", None, 0),
        ("array", [1, "a"], {"a": 1}),
        ("object", {"a": 1}, [1]),
    ],
)
def test_types_are_checked_strictly(kind: str, good: Any, bad: Any) -> None:
    # A value passes only as its own JSON type: `validate` returns it as is, so a "3" let
    # through for an integer would reach the next step as a string.
    assert validate({"type": kind}, good) == good
    with pytest.raises(ValidationError):
        validate({"type": kind}, bad)


def test_a_list_of_types() -> None:
    nullable = {"type": ["string", "null"]}
    assert validate(nullable, None) is None and validate(nullable, "x") == "x"
    with pytest.raises(ValidationError):
        validate(nullable, 1)


def test_enum_and_const() -> None:
    assert validate({"enum": ["a", "b"]}, "b") == "b"
    assert "Input should be 'a' or 'b'" in _error({"enum": ["a", "b"]}, "c")
    assert validate({"const": 3}, 3) == 3
    with pytest.raises(ValidationError):
        validate({"const": 3}, 4)


def test_enum_inside_a_model_schema() -> None:
    base = {"name": "x", "age": 1, "home": {"city": "c"}}
    assert validate(PERSON, {**base, "role": "admin"})["role"] == "admin"
    assert _error(PERSON, {**base, "role": "root"}) == "role: Input should be 'admin' or 'user'"


def test_array_items_and_length_bounds() -> None:
    arr = {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2}
    assert validate(arr, [1, 2]) == [1, 2]
    assert "at least 1 item" in _error(arr, [])
    assert "at most 2 items" in _error(arr, [1, 2, 3])
    assert _error(arr, [1, "x"]).startswith("1: ")  # the index of the bad item


def test_string_and_number_constraints() -> None:
    assert "at least 2 characters" in _error({"type": "string", "minLength": 2}, "a")
    assert "at most 3 characters" in _error({"type": "string", "maxLength": 3}, "abcd")
    assert "should match pattern" in _error({"type": "string", "pattern": "^a+$"}, "ab")
    assert "greater than or equal to 0" in _error({"type": "number", "minimum": 0}, -0.5)
    assert "less than or equal to 10" in _error({"type": "integer", "maximum": 10}, 11)


def test_nested_objects_report_the_nested_path() -> None:
    nested = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}},
                             "required": ["b"]}},
        "required": ["a"],
    }
    assert validate(nested, {"a": {"b": 1}}) == {"a": {"b": 1}}
    assert _error(nested, {"a": {}}) == "a.b: Field required"


def test_refs_into_defs_from_a_pydantic_schema() -> None:
    assert "$defs" in PERSON and PERSON["properties"]["home"] == {"$ref": "#/$defs/Address"}
    ok = {"name": "x", "age": 1, "home": {"city": "c"}, "others": [{"city": "d", "zip": None}]}
    assert validate(PERSON, ok) is ok
    assert _error(PERSON, {"name": "x", "age": 1, "home": {}}) == "home.city: Field required"
    assert _error(PERSON, {"name": "x", "age": 1, "home": {"city": "c"},
                           "others": [{"zip": "1"}]}) == "others.0.city: Field required"
    assert "at most 3 items" in _error(PERSON, {"name": "x", "age": 1, "home": {"city": "c"},
                                                "tags": ["a", "b", "c", "d"]})


def test_additional_properties_false_forbids_extras() -> None:
    closed = {**OBJ, "additionalProperties": False}
    assert _error(closed, {"topic": "x", "other": 1}) == "other: Extra inputs are not permitted"
    assert validate(OBJ, {"topic": "x", "other": 1}) == {"topic": "x", "other": 1}  # open


def test_any_of() -> None:
    either = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    assert validate(either, "a") == "a" and validate(either, 2) == 2
    with pytest.raises(ValidationError):
        validate(either, [2])
    one_of = {"oneOf": [{"type": "boolean"}, {"type": "null"}]}
    assert validate(one_of, None) is None


def test_property_names_that_are_not_identifiers_or_clash_with_pydantic() -> None:
    odd = {
        "type": "object",
        "properties": {"model_config": {"type": "string"}, "a-b": {"type": "integer"}},
        "required": ["model_config", "a-b"],
    }
    assert validate(odd, {"model_config": "x", "a-b": 1}) == {"model_config": "x", "a-b": 1}
    assert _error(odd, {"model_config": "x", "a-b": "z"}) == "a-b: Input should be a valid integer"


def test_describe_lists_every_failure_readably() -> None:
    text = _error(PERSON, {"age": "old", "home": {"city": 1}})
    assert text.split("; ") == [
        "age: Input should be a valid integer",
        "home.city: Input should be a valid string",
        "name: Field required",
    ]
    assert _error({"type": "integer"}, "x") == "(root): Input should be a valid integer"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"type": "frob"}, "unsupported type 'frob'"),
        ({"type": "object", "properties": {"when": {"type": "date"}}}, "Output.when: unsupported"),
        ({"type": "array", "items": {"type": "tuple"}}, "unsupported type 'tuple'"),
        ({"$ref": "#/$defs/Missing"}, "unresolved $ref"),
        ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "unknown properties"),
        ({"type": "object", "properties": {"a": 3}}, "a schema must be an object"),
    ],
)
def test_check_schema_refuses_what_it_cannot_validate(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaProblem, match=message.replace("$", r"\$")):
        check_schema(bad)


def test_check_schema_accepts_the_supported_subset() -> None:
    for ok in (PERSON, OBJ, {"type": "object"}, {}, {"type": ["integer", "null"]}):
        check_schema(ok)


def test_schema_problem_is_a_value_error() -> None:
    assert issubclass(schema.SchemaProblem, ValueError)


@pytest.mark.parametrize("keyword", ["allOf", "not", "if", "patternProperties"])
def test_keywords_the_subset_cannot_check_are_refused_not_ignored(keyword: str) -> None:
    with pytest.raises(SchemaProblem, match=f"unsupported keyword.*{keyword}"):
        check_schema({"type": "object", keyword: {}})
