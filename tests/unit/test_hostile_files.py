"""Hostile definition files and names: alias bombs, nesting, and pipeline names from producers.

A YAML alias bomb ("billion laughs": 9 anchors of 9 aliases, ~550 bytes, 387 million nodes once
expanded) or thousands of nested brackets must be refused by the loader in one line naming the
file, in well under a second, before pydantic or JSON expand anything. Names sent by producers
resolve inside the pipelines directory only.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from legato.errors import SpecError
from legato.loader import find_pipeline, load_models, load_pipeline

ROOT = Path(__file__).resolve().parents[2]
MODELS = "models:\n  small: {base_url: 'http://127.0.0.1:1/v1', model: tiny}\n"


def bomb(where: str) -> str:
    """~550 bytes: `*i` stands for 9**8 = 43 million copies of `a`."""
    anchors = ['    a: &a {type: string, description: "lol"}'] + [
        f"    {n}: &{n} [" + ", ".join([f"*{p}"] * 9) + "]"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)]
    if where == "input_schema":
        return "\n".join(["input_schema:", "  type: object", "  properties:", *anchors,
                          "steps:", "  - {id: s, kind: llm, model: small, prompt: hi}", ""])
    return "\n".join(["x-anchors:", "  lol:", *anchors, "steps:",
                      "  - {id: s, kind: llm, model: small, prompt: hi, params: {x: *i}}", ""])


@pytest.fixture
def pipelines_dir(tmp_path: Path) -> Path:
    (tmp_path / "models.yaml").write_text(MODELS)
    return tmp_path


def _refused(pipelines_dir: Path, name: str) -> SpecError:
    with pytest.raises(SpecError) as info:  # refused before parsing it all (the suite's timeout
        load_pipeline(name, pipelines_dir=pipelines_dir,  # catches a hang)
                      models_file=pipelines_dir / "models.yaml")
    assert "\n" not in str(info.value)
    return info.value


@pytest.mark.parametrize("where", ["input_schema", "params"])
def test_an_alias_bomb_is_refused_in_one_line_naming_the_file(pipelines_dir, where):
    path = pipelines_dir / "bomb.yaml"
    path.write_text(bomb(where))
    assert len(path.read_bytes()) < 600
    err = _refused(pipelines_dir, "bomb")
    assert str(err) == (f"{path}: refused: more than 100000 nodes once its aliases are "
                        "expanded (an alias bomb?)")


def test_an_alias_bomb_in_the_models_file_is_refused(pipelines_dir):
    models = pipelines_dir / "models.yaml"
    models.write_text(bomb("params").replace("steps:", "models:\n  small: {base_url: u, model: "
                                             "m, params: {x: *i}}\nunused:"))
    with pytest.raises(SpecError, match="an alias bomb") as info:
        load_models(models)
    assert info.value.source == str(models)


@pytest.mark.parametrize(("name", "text"), [
    ("deep.yaml", "steps: " + "[" * 5000 + "]" * 5000 + "\n"),
    ("deep.json", '{"steps": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    ("deepmap.yaml", "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + "  " * 200 + "v\n"),
])
def test_too_deep_files_are_refused_naming_the_file(pipelines_dir, name, text):
    path = pipelines_dir / name
    path.write_text(text)
    err = _refused(pipelines_dir, path.stem)
    assert str(err).startswith(f"{path}:") and "nested deeper than 64 levels" in str(err)


def test_a_file_with_a_few_aliases_still_loads(pipelines_dir):
    (pipelines_dir / "anchored.yaml").write_text(textwrap.dedent("""\
        steps:
          - &first {kind: llm, model: small, id: a, prompt: one, params: &p {max_tokens: 9}}
          - {<<: *first, id: b, prompt: "two {{ outputs.a }}", params: *p}
        """))
    spec = load_pipeline("anchored", pipelines_dir=pipelines_dir,
                         models_file=pipelines_dir / "models.yaml")
    assert [s.id for s in spec.steps] == ["a", "b"]


def test_legato_validate_refuses_a_bomb_with_one_line_and_exit_2(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb("params"))
    limit = 512 * 1024 * 1024  # the bomb would need tens of gigabytes

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "legato.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=60, preexec_fn=cap,
                          env={**os.environ, "LEGATO_PIPELINES_DIR": str(ROOT / "pipelines")})
    assert proc.returncode == 2, proc.stderr
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert lines == [f"error: {path}: refused: more than 100000 nodes once its aliases are "
                     "expanded (an alias bomb?)"]


# -- names from producers ---------------------------------------------------------------------

def test_names_only_resolves_inside_the_directory(tmp_path):
    pipes = tmp_path / "pipes"
    pipes.mkdir()
    (pipes / "models.yaml").write_text(MODELS)
    (pipes / "ok.yaml").write_text("steps: []\n")
    (pipes / "linked.yaml").symlink_to(pipes / "ok.yaml")  # inside: fine
    (tmp_path / "secret.yaml").write_text("db_password: hunter2\n")
    (pipes / "out.yaml").symlink_to(tmp_path / "secret.yaml")
    (pipes / "models_alias.yaml").symlink_to(pipes / "models.yaml")
    assert find_pipeline("ok", pipes, names_only=True) == (pipes / "ok.yaml").resolve()
    assert find_pipeline("linked", pipes, names_only=True) == (pipes / "ok.yaml").resolve()
    # The local CLI still takes file paths.
    assert find_pipeline(str(tmp_path / "secret.yaml"), pipes) == tmp_path / "secret.yaml"
    for name in ("../secret", str(tmp_path / "secret.yaml"), "out", "models", "models_alias",
                 "ok.yaml", "a/b", "..", "", ".hidden", "x" * 101, "nope"):
        with pytest.raises(SpecError) as info:
            find_pipeline(name, pipes, names_only=True)
        assert info.value.reason == "unknown pipeline", name
        assert str(pipes) not in str(info.value) and "ok" not in info.value.reason


def test_a_recursive_alias_is_refused(pipelines_dir):
    path = pipelines_dir / "loop.yaml"
    path.write_text("steps: &a [*a]\n")  # a sequence that contains itself
    assert str(_refused(pipelines_dir, "loop")) == f"{path}: refused: nested too deep"


def test_a_file_over_the_size_limit_is_not_read(pipelines_dir):
    path = pipelines_dir / "huge.yaml"
    path.write_text("steps: []\n# " + "x" * (4 * 1024 * 1024) + "\n")
    assert str(_refused(pipelines_dir, "huge")) == f"{path}: file is over 4194304 bytes"
