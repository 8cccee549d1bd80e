"""An eval's arms: per-step overrides of a pipeline (model alias, prompt, params, any field of
the step), read from a YAML file and applied to the loaded pipeline. The baseline is the arm
that overrides nothing.

    # fast.yaml
    steps:
      summary: {model: large, params: {max_tokens: 64}}
      headline: {prompt: "A headline of five words: {{ outputs.summary }}"}

A step is named by its id or its path (`triage/billing`). `params` is merged into the step's
own; every other field replaces the step's. The result is checked like any pipeline (the new
alias must exist in models.yaml, a new template must parse).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from legato import tree
from legato.errors import SpecError
from legato.loader import resolve
from legato.models.config import ModelConfig
from legato.spec import Pipeline

BASELINE = "baseline"
_FIXED = frozenset({"id", "kind"})  # what an arm may not change: which step it is
_PLACE = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")


@dataclass(frozen=True)
class Arm:
    name: str
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # step id/path -> fields

    @property
    def baseline(self) -> bool:
        return not self.steps


def load_arm(text: str) -> Arm:
    """`name=file.yaml` (the command line's `--arm`) -> an Arm. Raises SpecError."""
    name, sep, file = text.partition("=")
    if not sep or not name.strip() or not file.strip():
        raise SpecError(f"--arm {text!r}: expected name=file.yaml")
    name, path = name.strip(), Path(file.strip())
    if name == BASELINE:
        raise SpecError(f"--arm {text!r}: {BASELINE!r} is the unchanged pipeline, always run")
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"arm {name!r}: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"arm {name!r}: {path} is not YAML: {exc}") from None
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, dict) or not steps or not all(
            isinstance(v, dict) and v for v in steps.values()):
        raise SpecError("expected `steps:` mapping step ids to the fields to change",
                        source=str(path), path="steps")
    return Arm(name, {str(k): v for k, v in steps.items()})


def apply(pipeline: Pipeline, arm: Arm, models: dict[str, ModelConfig]) -> Pipeline:
    """`pipeline` with the arm's overrides, checked and its model aliases embedded (from
    `models` and those the pipeline already holds). Raises SpecError naming the arm and step."""
    if arm.baseline:
        return pipeline
    visits = {v.step.id: v for v in tree.walk(pipeline.steps)}
    visits.update({v.path: v for v in visits.values()})
    data = pipeline.model_dump(mode="json")
    for name, changes in arm.steps.items():
        visit = visits.get(name)
        where = f"steps.{name}"
        if visit is None:
            raise SpecError(f"no step {name!r} in pipeline {pipeline.name!r}",
                            source=f"arm {arm.name}", path=where)
        known = type(visit.step).model_fields
        for key in changes:
            if key in _FIXED or key not in known:
                raise SpecError(f"step {name!r} ({visit.step.kind}) has no field {key!r} an "
                                f"arm may change", source=f"arm {arm.name}", path=f"{where}.{key}")
        target = _at(data, visit.where)
        for key, value in changes.items():
            if key == "params" and isinstance(value, dict):
                value = {**(target.get("params") or {}), **value}
            target[key] = value
    try:
        changed = Pipeline.model_validate({**data, "models": {}})
    except ValidationError as exc:
        first = exc.errors()[0]
        place = ".".join(str(p) for p in first["loc"])
        raise SpecError(f"{first['msg']} (at {place})", source=f"arm {arm.name}") from None
    return resolve(changed, {**models, **pipeline.models}, source=f"arm {arm.name}")


def _at(data: dict[str, Any], where: str) -> dict[str, Any]:
    """The dict at a tree.walk `where` (`steps[0].branches.billing`) in a dumped pipeline."""
    node: Any = data
    for name, index in _PLACE.findall(where):
        node = node[int(index)] if index else node[name]
    return node
