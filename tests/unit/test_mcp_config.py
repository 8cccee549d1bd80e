"""MCP configuration without a server: references parse or are refused at load, mcp.yaml is read
or refused naming the server and field, and a journaled call's key ignores the model's call id."""

from __future__ import annotations

import pytest

from legato import Pipeline
from legato.errors import SpecError
from legato.loader import resolve
from legato.spec import Agent, Tool
from legato.tools.mcp import call_key, load_servers, model_name, parse_ref


def test_references_parse_and_bad_ones_are_refused_when_the_pipeline_loads():
    assert parse_ref("mcp:notes") == ("notes", None)
    assert parse_ref("mcp:notes/add_note") == ("notes", "add_note")
    assert model_name("notes", "add_note") == "notes__add_note"
    agent = Pipeline(name="a", steps=[Agent(id="a", model="m", prompt="p",
                                            tools=["mcp:notes", "mcp:notes/add_note"])])
    assert resolve(agent, {"m": _model()}).steps  # the producer checks the name only
    with pytest.raises(SpecError, match=r"steps\[0\].tool.*is not mcp:<server>"):
        resolve(Pipeline(name="t", steps=[Tool(id="t", tool="mcp:a/b/c")]), {})


def _model():
    from legato.spec import ModelConfig
    return ModelConfig(base_url="http://127.0.0.1:1/v1", model="m")


def test_mcp_yaml_is_read_or_refused_naming_the_server(tmp_path):
    path = tmp_path / "mcp.yaml"
    assert load_servers(path) == {}  # no file: no servers
    path.write_text("servers:\n  notes: {command: [python, s.py], env: {T: '${T}'}}\n"
                    "  web: {url: 'https://x/mcp', headers: {A: '${A}'}, approval: required}\n")
    servers = load_servers(path)
    assert servers["notes"].env == {"T": "${T}"}  # expanded by the worker when it connects
    assert servers["web"].approval == "required" and servers["web"].timeout == 30
    for body, where in [("servers:\n  x: {}\n", "servers.x"),
                        ("servers:\n  x: {url: u, command: [c]}\n", "servers.x"),
                        ("servers:\n  x: {url: u, env: {A: b}}\n", "servers.x"),
                        ("servers:\n  x: {url: u, timeout: -1}\n", "servers.x.timeout"),
                        ("servers:\n  a__b: {url: u}\n", "servers.a__b"),
                        ("nothing: 1\n", "servers")]:
        path.write_text(body)
        with pytest.raises(SpecError) as caught:
            load_servers(path)
        assert caught.value.path == where and str(path) in str(caught.value)


def test_a_journaled_calls_key_is_its_place_and_arguments_not_the_models_id():
    key = call_key("run", "a/turn[0]", 0, "notes__add_note", {"text": "x", "n": 1})
    assert key == call_key("run", "a/turn[0]", 0, "notes__add_note", {"n": 1, "text": "x"})
    assert key != call_key("run", "a/turn[0]", 1, "notes__add_note", {"text": "x", "n": 1})
    assert key != call_key("run", "a/turn[1]", 0, "notes__add_note", {"text": "x", "n": 1})
    assert key != call_key("run", "a/turn[0]", 0, "notes__add_note", {"text": "y", "n": 1})
