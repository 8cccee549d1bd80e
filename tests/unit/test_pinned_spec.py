"""A spec read back from the store keeps its canonical JSON (graph lookups key on it); a copy
of it with changes must not keep the old text (replay copies a pinned spec with `cache`)."""

from __future__ import annotations

from legato import graph
from legato.spec import Llm, Pipeline, pipeline_from_json


def _spec() -> Pipeline:
    return Pipeline(name="p", steps=[Llm(id="a", model="m", prompt="hi {{ input.x }}")])


def test_a_pinned_spec_answers_with_its_text_and_finds_its_nodes() -> None:
    text = _spec().canonical_json()
    pinned = pipeline_from_json(text).pin()
    assert pinned.canonical_json() is pinned.canonical_json() == text
    assert graph.node(pinned, "a").step.id == "a"


def test_a_copy_of_a_pinned_spec_with_changes_has_its_own_text_and_hash() -> None:
    pinned = pipeline_from_json(_spec().canonical_json()).pin()
    replaying = pinned.model_copy(update={"cache": "replay"})
    assert '"cache":"replay"' in replaying.canonical_json()
    assert replaying.content_hash() != pinned.content_hash()
