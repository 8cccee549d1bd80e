"""`legato.__all__` is the deliberate public API: complete, accurate and sorted."""

from __future__ import annotations

import types

import legato


def _public_names() -> set[str]:
    return {
        name
        for name, value in vars(legato).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_every_name_in_all_exists() -> None:
    missing = [name for name in legato.__all__ if not hasattr(legato, name)]
    assert missing == []


def test_every_public_attribute_is_in_all() -> None:
    assert _public_names() == set(legato.__all__)


def test_all_is_sorted_without_duplicates() -> None:
    assert legato.__all__ == sorted(set(legato.__all__))


def test_exported_names_are_defined_where_they_claim() -> None:
    # Re-exports keep their home module, so `legato.X` is the very object the engine uses.
    for name in legato.__all__:
        value = getattr(legato, name)
        module = getattr(value, "__module__", "")
        assert module.startswith("legato."), (name, module)
