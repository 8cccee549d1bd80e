"""The tool registry: `@tool` turns a typed function into a tool a step or an agent can call.

    @tool(timeout=10, retries=2, queue="legato.tools.slow")
    def lookup(order_id: str, idempotency_key: str = "") -> dict: ...

Arguments are checked by pydantic from the type hints, and the same hints give the JSON schema
models see for function calling (`ToolSpec.openai()`). A parameter named `idempotency_key` is
filled by Legato with a key derived from (run, step, call), the same on every redelivery, so a
tool with side effects can make them happen once.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, create_model, validate_call

IDEMPOTENCY_PARAM = "idempotency_key"


@dataclass(frozen=True)
class ToolSpec:
    name: str
    fn: Callable[..., Any]  # validated: arguments are checked and coerced by pydantic
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments a model supplies
    timeout: float | None = None
    retries: int = 0
    queue: str | None = None
    wants_idempotency_key: bool = False
    approval: Literal["none", "required"] = "none"  # required: an agent waits for a person

    def openai(self) -> dict[str, Any]:
        """The tool as OpenAI's function-calling API describes it."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}


_TOOLS: dict[str, ToolSpec] = {}


class ToolNotFound(KeyError):
    pass


def _parameters(fn: Callable[..., Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(fn).parameters.items():
        if name == IDEMPOTENCY_PARAM:
            continue
        annotation = param.annotation if param.annotation is not inspect.Parameter.empty else Any
        default = param.default if param.default is not inspect.Parameter.empty else ...
        fields[name] = (annotation, default)
    model = create_model(f"{fn.__name__}_args", __config__=ConfigDict(extra="forbid"), **fields)
    schema = TypeAdapter(model).json_schema()
    schema.pop("title", None)
    return schema


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None,
         timeout: float | None = None, retries: int = 0, queue: str | None = None,
         approval: Literal["none", "required"] = "none") -> Any:
    """Register `fn` as a tool under `name` (default: the function's name). `approval=
    "required"`: an agent that wants to call it pauses until a person approves, rejects or edits
    the call (`legato signal RUN AGENT_STEP --data '{"decision": "approve"}'`)."""

    def register(f: Callable[..., Any]) -> Callable[..., Any]:
        params = inspect.signature(f).parameters
        spec = ToolSpec(
            name=name or f.__name__, fn=validate_call(f),
            description=inspect.getdoc(f) or "", parameters=_parameters(f), timeout=timeout,
            retries=retries, queue=queue, wants_idempotency_key=IDEMPOTENCY_PARAM in params,
            approval=approval)
        _TOOLS[spec.name] = spec
        return f

    return register(fn) if fn is not None else register


def register_spec(spec: ToolSpec) -> ToolSpec:
    """Register a tool built by hand (e.g. `http_tool`); its `fn` checks its own arguments."""
    _TOOLS[spec.name] = spec
    return spec


def get_tool(name: str) -> ToolSpec:
    try:
        return _TOOLS[name]
    except KeyError:
        raise ToolNotFound(f"unknown tool {name!r}; known: {', '.join(sorted(_TOOLS))}") from None


def tool_names() -> list[str]:
    return sorted(_TOOLS)


def load_tool_modules(modules: Iterable[str]) -> None:
    """Import the modules that register tools (each import happens once)."""
    for module in modules:
        if module:
            importlib.import_module(module)
