"""Loading pipelines: bad files fail with the file and the exact place in it; good ones load."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from legato import loader
from legato.client import check_input
from legato.errors import InputError, SpecError
from legato.loader import load_models, load_pipeline

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "pipelines"
MODELS = """\
models:
  small: {base_url: "http://127.0.0.1:1/v1", model: tiny}
  large: {base_url: "http://127.0.0.1:1/v1", model: big}
"""


@pytest.fixture
def pipelines_dir(tmp_path: Path) -> Path:
    (tmp_path / "models.yaml").write_text(MODELS)
    return tmp_path


def _load(pipelines_dir: Path, text: str, name: str = "bad") -> SpecError:
    path = pipelines_dir / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(SpecError) as info:
        load_pipeline(name, pipelines_dir=pipelines_dir, models_file=pipelines_dir / "models.yaml")
    err = info.value
    assert err.source == str(path)
    assert str(err).startswith(f"{path}:")
    return err


CASES = {
    "unknown step kind": (
        """
        steps:
          - {kind: llmm, id: a, model: small, prompt: hi}
        """,
        "steps[0].kind", "unknown step kind 'llmm'",
    ),
    "missing kind": (
        """
        steps:
          - {id: a, model: small, prompt: hi}
        """,
        "steps[0].kind", "missing `kind`",
    ),
    "missing field": (
        """
        steps:
          - {kind: llm, id: a, model: small, prompt: hi}
          - {kind: llm, id: b, model: small}
        """,
        "steps[1].prompt", "required field is missing",
    ),
    "missing field of a tool step (its field is named like its kind)": (
        """
        steps:
          - {kind: tool, id: t}
        """,
        "steps[0].tool", "required field is missing",
    ),
    "wrong type of a tool step's tool": (
        """
        steps:
          - {kind: tool, id: t, tool: [word_count]}
        """,
        "steps[0].tool", "valid string",
    ),
    "missing field in a chain": (
        """
        steps:
          - kind: chain
            id: c
            steps:
              - {kind: llm, id: a, model: small, prompt: hi}
              - {kind: llm, id: b, prompt: hi}
        """,
        "steps[0].steps[1].model", "required field is missing",
    ),
    "missing field in a vote": (
        """
        steps:
          - kind: parallel
            id: p
            vote: {step: {kind: llm, id: v, model: small}}
        """,
        "steps[0].vote.step.prompt", "required field is missing",
    ),
    "unknown step kind in a route branch": (
        """
        steps:
          - kind: route
            id: r
            classifier: {rule: "'x'"}
            branches:
              x: {kind: lm, id: x, model: small, prompt: hi}
        """,
        "steps[0].branches.x.kind", "unknown step kind 'lm'",
    ),
    "unknown model alias": (
        """
        steps:
          - {kind: llm, id: a, model: huge, prompt: hi}
        """,
        "steps[0].model", "unknown model alias 'huge' (known: large, small)",
    ),
    "unknown model alias in a route branch": (
        """
        steps:
          - kind: route
            id: r
            classifier: {rule: "'x'"}
            branches:
              x: {kind: llm, id: x, model: huge, prompt: hi}
        """,
        "steps[0].branches.x.model", "unknown model alias 'huge'",
    ),
    "unknown model alias of a route classifier": (
        """
        steps:
          - kind: route
            id: r
            classifier: {model: huge, prompt: pick}
            branches:
              x: {kind: llm, id: x, model: small, prompt: hi}
        """,
        "steps[0].classifier.model", "unknown model alias 'huge'",
    ),
    "unknown model alias in a parallel section": (
        """
        steps:
          - kind: parallel
            id: p
            sections:
              - {kind: llm, id: s1, model: small, prompt: hi}
              - {kind: llm, id: s2, model: huge, prompt: hi}
        """,
        "steps[0].sections[1].model", "unknown model alias 'huge'",
    ),
    "unknown model alias of an aggregate": (
        """
        steps:
          - kind: parallel
            id: p
            sections: [{kind: llm, id: s1, model: small, prompt: hi}]
            aggregate: {method: llm, model: huge, prompt: combine}
        """,
        "steps[0].aggregate.model", "unknown model alias 'huge'",
    ),
    "unknown model alias of an orchestrate planner": (
        """
        steps:
          - kind: orchestrate
            id: o
            planner: {model: huge, prompt: plan}
            worker: {model: small, prompt: work}
            synthesizer: {model: small, prompt: combine}
        """,
        "steps[0].planner.model", "unknown model alias 'huge'",
    ),
    "template naming a step that does not exist": (
        """
        steps:
          - {kind: llm, id: a, model: small, prompt: hi}
          - {kind: llm, id: b, model: small, prompt: "{{ outputs.nope }}"}
        """,
        "steps[1].prompt", "template names step 'nope', which does not exist",
    ),
    "template reading its own step's output": (
        """
        steps:
          - {kind: llm, id: a, model: small, prompt: "{{ outputs['a'] }}"}
        """,
        "steps[0].prompt", "reads its own output",
    ),
    "template naming a missing step in a tool argument": (
        """
        steps:
          - {kind: tool, id: t, tool: word_count, args: {text: "{{ outputs.ghost }}"}}
        """,
        "steps[0].args.text", "'ghost'",
    ),
    "template syntax error": (
        """
        steps:
          - {kind: llm, id: a, model: small, prompt: "{{ input.text "}
        """,
        "steps[0].prompt", "template syntax error on line 1",
    ),
    "gate expression syntax error": (
        """
        steps:
          - {kind: llm, id: a, model: small, prompt: hi, gate: {check: "output >"}}
        """,
        "steps[0].gate.check", "template syntax error",
    ),
    "output template naming a missing step": (
        """
        steps:
          - {kind: llm, id: a, model: small, prompt: hi}
        output: "{{ outputs.b }}"
        """,
        "output", "'b'",
    ),
    "duplicate step ids": (
        """
        steps:
          - {kind: llm, id: a, model: small, prompt: hi}
          - kind: chain
            id: c
            steps: [{kind: llm, id: a, model: small, prompt: again}]
        """,
        "steps[1].steps[0].id", "duplicate step id 'a' (also at steps[0])",
    ),
    "unknown tool": (
        """
        steps:
          - {kind: tool, id: t, tool: no_such_tool}
        """,
        "steps[0].tool", "unknown tool 'no_such_tool'; known: ",
    ),
    "route default that is not a branch": (
        """
        steps:
          - kind: route
            id: r
            classifier: {rule: "'x'"}
            default: y
            branches:
              x: {kind: llm, id: x, model: small, prompt: hi}
        """,
        "steps[0]", "default 'y' is not one of the branches",
    ),
    "parallel with both sections and vote": (
        """
        steps:
          - kind: parallel
            id: p
            sections: [{kind: llm, id: s1, model: small, prompt: hi}]
            vote: {step: {kind: llm, id: v, model: small, prompt: hi}}
        """,
        "steps[0]", "give either `sections` or `vote`",
    ),
    "parallel with neither sections nor vote": (
        """
        steps:
          - {kind: parallel, id: p}
        """,
        "steps[0]", "give either `sections` or `vote`",
    ),
    "vote of one": (
        """
        steps:
          - kind: parallel
            id: p
            vote: {n: 1, step: {kind: llm, id: v, model: small, prompt: hi}}
        """,
        "steps[0].vote.n", "greater than or equal to 2",
    ),
    "unknown field": (
        """
        steps:
          - {kind: llm, id: a, model: small, prompt: hi, temprature: 0.2}
        """,
        "steps[0].temprature", "unknown field",
    ),
    "bad step id": (
        """
        steps:
          - {kind: llm, id: a-b, model: small, prompt: hi}
        """,
        "steps[0].id", "should match pattern",
    ),
    "unsupported output schema": (
        """
        steps:
          - {kind: llm, id: a, model: small, prompt: hi, output_schema: {type: date}}
        """,
        "steps[0].output_schema", "unsupported type 'date'",
    ),
    "unsupported input schema": (
        """
        input_schema: {type: object, properties: {when: {type: date}}}
        steps:
          - {kind: llm, id: a, model: small, prompt: hi}
        """,
        "input_schema", "unsupported type 'date'",
    ),
}


@pytest.mark.parametrize("text, path, reason", CASES.values(), ids=list(CASES))
def test_bad_pipeline_names_the_file_and_the_path(
    pipelines_dir: Path, text: str, path: str, reason: str
) -> None:
    err = _load(pipelines_dir, text)
    assert err.path == path
    assert reason in err.reason


def test_invalid_yaml_names_the_line(pipelines_dir: Path) -> None:
    err = _load(pipelines_dir, "steps:\n  - kind: llm\n   id: a\n")
    assert err.path == "line 3"
    assert err.reason.startswith("not valid YAML")


def test_a_file_that_is_not_a_mapping(pipelines_dir: Path) -> None:
    err = _load(pipelines_dir, "- just\n- a list\n")
    assert "mapping at the top level" in err.reason


def test_unknown_pipeline_lists_the_known_ones(pipelines_dir: Path) -> None:
    for name in ("beta", "alpha"):
        (pipelines_dir / f"{name}.yaml").write_text("steps: []\n")
    with pytest.raises(SpecError) as info:
        load_pipeline("gamma", pipelines_dir=pipelines_dir,
                      models_file=pipelines_dir / "models.yaml")
    assert info.value.source == "gamma"
    assert "unknown pipeline" in info.value.reason
    assert "known: alpha, beta" in info.value.reason  # sorted; models.yaml is not a pipeline


def test_a_pipeline_by_path_and_its_name_defaults_to_the_file_stem(pipelines_dir: Path) -> None:
    path = pipelines_dir / "hello.yaml"
    path.write_text("steps: [{kind: llm, id: a, model: small, prompt: hi}]\n")
    spec = load_pipeline(str(path), pipelines_dir=pipelines_dir / "elsewhere",
                         models_file=pipelines_dir / "models.yaml")
    assert spec.name == "hello"
    # Only the aliases it uses are embedded, so its content hash pins exactly those.
    assert set(spec.models) == {"small"} and spec.models["small"].model == "tiny"


def test_a_bad_models_file_names_the_alias(pipelines_dir: Path) -> None:
    (pipelines_dir / "models.yaml").write_text("models:\n  small: {model: tiny}\n")
    with pytest.raises(SpecError) as info:
        load_models(pipelines_dir / "models.yaml")
    assert info.value.path == "models.small.base_url"
    assert info.value.source == str(pipelines_dir / "models.yaml")


def test_models_file_expands_environment_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(textwrap.dedent("""\
        models:
          m:
            base_url: ${TEST_LEGATO_URL:-http://default:8080/v1}
            model: ${TEST_LEGATO_MODEL:-tiny}-${TEST_LEGATO_SUFFIX}
            api_key_env: TEST_LEGATO_KEY
            params: {stop: ["${TEST_LEGATO_STOP:-END}"]}
        """))
    for name in ("TEST_LEGATO_URL", "TEST_LEGATO_MODEL", "TEST_LEGATO_SUFFIX", "TEST_LEGATO_STOP"):
        monkeypatch.delenv(name, raising=False)
    m = load_models(models)["m"]
    assert (m.base_url, m.model, m.params) == ("http://default:8080/v1", "tiny-", {"stop": ["END"]})
    assert m.api_key_env == "TEST_LEGATO_KEY"  # the key's name, never its value

    monkeypatch.setenv("TEST_LEGATO_URL", "https://api.example.test/v1")
    monkeypatch.setenv("TEST_LEGATO_MODEL", "big")
    monkeypatch.setenv("TEST_LEGATO_SUFFIX", "v2")
    monkeypatch.setenv("TEST_LEGATO_STOP", "STOP")
    m = load_models(models)["m"]
    assert (m.base_url, m.model, m.params) == ("https://api.example.test/v1", "big-v2",
                                                {"stop": ["STOP"]})


# -- the example pipelines ---------------------------------------------------------------------

EXAMPLES = loader.available_pipelines(PIPELINES)


def test_there_are_example_pipelines() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_pipeline_loads(name: str) -> None:
    spec = load_pipeline(name, pipelines_dir=PIPELINES, models_file=PIPELINES / "models.yaml")
    assert spec.name == name and spec.models
    assert spec.content_hash() == spec.content_hash() and len(spec.content_hash()) == 32


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_pipeline_has_an_input_that_passes_its_schema(name: str) -> None:
    spec = load_pipeline(name, pipelines_dir=PIPELINES, models_file=PIPELINES / "models.yaml")
    example = json.loads((PIPELINES / f"{name}.input.json").read_text())
    check_input(spec, example)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_pipeline_refuses_a_bad_input_naming_the_field(name: str) -> None:
    spec = load_pipeline(name, pipelines_dir=PIPELINES, models_file=PIPELINES / "models.yaml")
    example = json.loads((PIPELINES / f"{name}.input.json").read_text())
    field = spec.input_schema["required"][0]
    with pytest.raises(InputError) as info:
        check_input(spec, {k: v for k, v in example.items() if k != field})
    assert f"{field}: Field required" in str(info.value)
    assert repr(name) in str(info.value)
    with pytest.raises(InputError, match=f"{field}: Input should be a valid string"):
        check_input(spec, {**example, field: 42})
