"""Loading pipelines and model configs from files, with errors that name the file and the path.

`load_pipeline` parses YAML (or JSON) into a `Pipeline`, then checks what a schema cannot: unique
step ids, known model aliases and tools, templates that parse and name existing steps, schemas
that can be validated. The model aliases a pipeline uses are embedded into it, so a run pinned to
the pipeline's content hash is pinned to its models too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from legato import schema, templates, tree
from legato.errors import SpecError
from legato.kinds import kind_of, names
from legato.kinds import wait as wait_kind
from legato.kinds.chain import Chain
from legato.models.config import ModelConfig
from legato.spec import Pipeline
from legato.tools import get_tool
from legato.tools.registry import ToolNotFound

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# -- files -------------------------------------------------------------------------------------


# A definition file is small: these bound what a hostile one (an alias bomb, "billion laughs",
# or thousands of nested brackets) can make the loader build, long before memory runs out.
MAX_YAML_NODES = 100_000  # scalars, sequences and mappings, every alias counted in full
MAX_YAML_DEPTH = 64
MAX_YAML_BYTES = 4 * 1024 * 1024


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents too deep or too large once aliases are expanded
    (pydantic and JSON expand every alias: 9 anchors of 9 aliases are 387 million nodes)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _TooBig(f"nested deeper than {MAX_YAML_DEPTH} levels", self.peek_event())
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        _check_expanded_size(node)
        return node


class _TooBig(Exception):
    def __init__(self, reason: str, event: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = event.start_mark.line + 1 if event is not None else None


def _check_expanded_size(root: Any) -> None:
    """Count nodes as if every alias were copied out (memoised per node: linear in the file)."""
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        if total > MAX_YAML_NODES:
            raise _TooBig(f"more than {MAX_YAML_NODES} nodes once its aliases are expanded "
                          "(an alias bomb?)")
        sizes[id(node)] = total
        return total

    if root is not None:
        size(root)  # recursion is bounded by MAX_YAML_DEPTH, checked while composing


def _read_yaml(path: Path) -> Any:
    """Parse a YAML (or JSON) definition file with the limits above; SpecError names the file."""
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise SpecError(f"file is over {MAX_YAML_BYTES} bytes", source=str(path))
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", source=str(path)) from exc
    except UnicodeDecodeError:
        raise SpecError("not a UTF-8 text file", source=str(path)) from None
    try:
        return yaml.load(text, Loader=_LimitedLoader)  # noqa: S506 - a SafeLoader subclass
    except _TooBig as exc:
        raise SpecError(f"refused: {exc.reason}", source=str(path),
                        path=f"line {exc.line}" if exc.line else "") from None
    except RecursionError:
        raise SpecError("refused: nested too deep", source=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise SpecError(f"not valid YAML: {getattr(exc, 'problem', exc)}", source=str(path),
                        path=where) from exc


def _expand_env(value: Any) -> Any:
    """`${NAME}` and `${NAME:-default}` in strings are replaced from the environment.

    Not in a model's `headers`: they may hold secrets, expanded only by the process that makes
    the call, when it makes it (models/credentials.py), never pinned into a spec."""
    if isinstance(value, str):
        return _ENV_REF.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    return value


def load_models(path: Path) -> dict[str, ModelConfig]:
    """Read a models file: `models: {alias: {base_url, model, api_key_env, params, ...}}`."""
    data = _read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise SpecError("expected a mapping with a `models:` mapping", source=str(path))
    out = {}
    for alias, raw in data["models"].items():
        try:
            expanded = ({k: v if k == "headers" else _expand_env(v) for k, v in raw.items()}
                        if isinstance(raw, dict) else _expand_env(raw))
            out[alias] = ModelConfig.model_validate(expanded)
        except ValidationError as exc:
            raise _spec_error(exc, raw, str(path), prefix=f"models.{alias}") from None
    return out


# What a pipeline name sent over the wire may be: a file stem inside the pipelines directory.
PIPELINE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}")
_NOT_PIPELINES = frozenset({"models"})


def find_pipeline(name_or_path: str, pipelines_dir: Path, *, names_only: bool = False) -> Path:
    """The file for a pipeline name (in `pipelines_dir`) or, unless `names_only`, a file path.

    `names_only` is for names from producers (`legato.submit`): no path separators, no absolute
    paths, no `models`, no symlink leading out of the directory, and an error that names neither
    the directory nor what is in it."""
    if names_only:
        return _find_by_name(name_or_path, pipelines_dir)
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        return path
    for suffix in (".yaml", ".yml", ".json"):
        candidate = pipelines_dir / f"{name_or_path}{suffix}"
        if candidate.is_file():
            return candidate
    known = ", ".join(available_pipelines(pipelines_dir)) or "none"
    raise SpecError(f"unknown pipeline (no such file, nor in {pipelines_dir}/; known: {known})",
                    source=name_or_path)


def _find_by_name(name: str, pipelines_dir: Path) -> Path:
    shown = name[:100] if isinstance(name, str) else repr(name)[:100]
    unknown = SpecError("unknown pipeline", source=shown)
    if not isinstance(name, str) or not PIPELINE_NAME.fullmatch(name) or name in _NOT_PIPELINES:
        raise unknown
    try:
        root = pipelines_dir.resolve(strict=True)
    except OSError:
        raise unknown from None
    for suffix in (".yaml", ".yml", ".json"):
        candidate = root / f"{name}{suffix}"
        try:
            real = candidate.resolve(strict=True)
        except OSError:
            continue
        # A symlink may not lead out of the directory (nor deeper, nor to the models file).
        if real.parent == root and real.is_file() and real.stem not in _NOT_PIPELINES:
            return real
        raise unknown
    raise unknown


def available_pipelines(pipelines_dir: Path) -> list[str]:
    if not pipelines_dir.is_dir():
        return []
    names = {p.stem for p in pipelines_dir.glob("*.y*ml") if p.stem != "models"}
    return sorted(n for n in names if not n.endswith(".fake"))


def load_pipeline(name_or_path: str, *, pipelines_dir: Path, models_file: Path) -> Pipeline:
    path = find_pipeline(name_or_path, pipelines_dir)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError("expected a mapping at the top level", source=str(path))
    data.setdefault("name", path.stem)
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as exc:
        raise _spec_error(exc, data, str(path)) from None
    return resolve(pipeline, load_models(models_file), source=str(path))


# -- checks ------------------------------------------------------------------------------------


def resolve(pipeline: Pipeline, models: dict[str, ModelConfig], *, source: str = "") -> Pipeline:
    """Check `pipeline` as a whole and embed the model configs it uses. Raises SpecError."""
    if pipeline.models:  # already resolved (e.g. re-submitting a stored spec)
        models = {**models, **pipeline.models}
    visits = list(tree.walk(pipeline.steps))
    ids: dict[str, str] = {}
    for visit in visits:
        if visit.step.id in ids:
            raise SpecError(f"duplicate step id {visit.step.id!r} (also at {ids[visit.step.id]})",
                            source=source, path=f"{visit.where}.id")
        ids[visit.step.id] = visit.where
    used: set[str] = set()
    for visit in visits:
        kind, where = kind_of(visit.step), visit.where
        for field, alias in kind.aliases(visit.step):
            if alias not in models:
                known = ", ".join(sorted(models)) or "none"
                raise SpecError(f"unknown model alias {alias!r} (known: {known})",
                                source=source, path=f"{where}.{field}")
            used.add(alias)
        for field, text, is_expr in tree.templates(visit.step):
            _check_template(text, is_expr, ids, visit.step.id, source, f"{where}.{field}")
        for field, output_schema in kind.schemas(visit.step):
            try:
                schema.check_schema(output_schema)
            except schema.SchemaProblem as exc:
                raise SpecError(str(exc), source=source, path=f"{where}.{field}") from None
        for field, name in kind.tools(visit.step):
            try:
                get_tool(name)
            except ToolNotFound as exc:
                raise SpecError(exc.args[0], source=source, path=f"{where}.{field}") from None
    chains = [("steps", pipeline.steps)] + [(f"{v.where}.steps", v.step.steps) for v in visits
                                            if isinstance(v.step, Chain)]
    for where, steps in chains:
        for place, problem in wait_kind.jump_problems(steps, where):
            raise SpecError(problem, source=source, path=place)
    try:
        schema.check_schema(pipeline.input_schema)
    except schema.SchemaProblem as exc:
        raise SpecError(str(exc), source=source, path="input_schema") from None
    if pipeline.output is not None:
        _check_template(pipeline.output, False, ids, "", source, "output")
    pending = sorted(used)
    while pending:  # a model's fallbacks are embedded too, so the run is pinned to them
        alias = pending.pop()
        for fallback in models[alias].fallbacks:
            if fallback not in models:
                known = ", ".join(sorted(models)) or "none"
                raise SpecError(f"unknown fallback model {fallback!r} (known: {known})",
                                source=source, path=f"models.{alias}.fallbacks")
            if fallback not in used:
                used.add(fallback)
                pending.append(fallback)
    return pipeline.model_copy(update={"models": {a: models[a] for a in sorted(used)}})


def _check_template(
    text: str, is_expr: bool, ids: dict[str, str], own_id: str, source: str, where: str
) -> None:
    try:
        refs = templates.referenced_outputs(text, expression=is_expr)
    except templates.TemplateProblem as exc:
        raise SpecError(str(exc), source=source, path=where) from None
    for ref in sorted(refs):
        if ref not in ids:
            raise SpecError(f"template names step {ref!r}, which does not exist",
                            source=source, path=where)
        if ref == own_id:
            raise SpecError(f"template of step {ref!r} reads its own output",
                            source=source, path=where)


# -- pydantic errors -> file paths -------------------------------------------------------------


def _spec_error(exc: ValidationError, data: Any, source: str, prefix: str = "") -> SpecError:
    problems = []
    for err in exc.errors():
        path = _data_path(err["loc"], data)
        if err["type"] == "union_tag_invalid":
            path += ".kind"
            msg = f"unknown step kind {err['ctx']['tag']!r} (expected one of: {_kinds()})"
        elif err["type"] == "union_tag_not_found":
            path += ".kind"
            msg = f"missing `kind` (one of: {_kinds()})"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        full = ".".join(p for p in (prefix, path) if p)
        problems.append((full, msg))
    first_path, first_msg = problems[0]
    more = "".join(f"\n  {p}: {m}" for p, m in problems[1:])
    return SpecError(first_msg + more, source=source, path=first_path)


def _kinds() -> str:
    return ", ".join(names())


def _data_path(loc: tuple[Any, ...], data: Any) -> str:
    """Turn a pydantic error location into a file path, dropping the union tags pydantic adds."""
    parts: list[str] = []
    node = data
    entered = False  # just stepped into a list item or mapping value: a union tag may follow
    for key in loc:
        if entered and isinstance(node, dict) and node.get("kind") == key:
            entered = False  # the discriminator's tag, once (a `tool` step has a `tool` field)
            continue
        entered = False
        if isinstance(key, int) and isinstance(node, list) and key < len(node):
            parts.append(f"[{key}]")
            node = node[key]
            entered = True
        elif isinstance(node, dict) and key in node:
            parts.append(f".{key}")
            node = node[key]
            entered = True
        elif isinstance(key, str) and not key.startswith("function-"):
            parts.append(f".{key}")
            node = None
    return "".join(parts).lstrip(".")
