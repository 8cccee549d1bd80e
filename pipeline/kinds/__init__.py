"""The step-kind registry: every kind Legato knows, one module each.

Adding a kind is one module (its spec class, loading checks, canvas and work — see
`legato.kinds.base.Kind`) and its line here, in KINDS and in the `Step` union (spelled out so
type checkers see it; a test keeps the two equal). The loader's checks, the graph, the compiler
and every error that lists kinds read this registry.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from legato.kinds import agent, chain, evaluate, llm, orchestrate, parallel, route, tool, wait
from legato.kinds.base import Kind

KINDS: dict[str, Kind] = {k.name: k for k in (
    llm.LlmKind(),
    tool.ToolKind(),
    chain.ChainKind(),
    route.RouteKind(),
    parallel.ParallelKind(),
    orchestrate.OrchestrateKind(),
    evaluate.EvaluateKind(),
    agent.AgentKind(),
    wait.WaitKind(),
)}

# Every step spec, tagged by its literal `kind`.
Step = Annotated[
    Union[  # noqa: UP007
        llm.Llm, tool.Tool, chain.Chain, route.Route, parallel.Parallel,
        orchestrate.Orchestrate, evaluate.Evaluate, agent.Agent, wait.Wait,
    ],
    Field(discriminator="kind"),
]
for _kind in KINDS.values():  # composites hold Steps: resolve the forward reference now
    _kind.spec.model_rebuild(_types_namespace={"Step": Step})
parallel.Vote.model_rebuild()


def kind_of(step: Any) -> Kind:
    """The registered kind of a step spec."""
    return KINDS[step.kind]


def names() -> tuple[str, ...]:
    return tuple(KINDS)
