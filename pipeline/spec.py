"""Pipelines as data: a `Pipeline` of steps, each of a registered kind (legato.kinds), tagged by
`kind`. The same models are the Python API (`Pipeline(steps=[Llm(...)])`) and what YAML files
parse into. Loading files, resolving model aliases and cross-step checks live in `loader.py`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, PrivateAttr, TypeAdapter

from legato.fields import Concurrency, FanOutPolicy, Gate, ModelCall, StepBase, StepId, Strict
from legato.kinds import KINDS, Step
from legato.kinds.agent import Agent
from legato.kinds.chain import Chain
from legato.kinds.child import PipelineStep
from legato.kinds.evaluate import Evaluate
from legato.kinds.llm import Llm
from legato.kinds.orchestrate import Orchestrate
from legato.kinds.parallel import Aggregate, Parallel, Vote
from legato.kinds.route import Classifier, Route
from legato.kinds.tool import Tool
from legato.kinds.wait import Wait
from legato.models.config import Breaker, Budget, ModelConfig, Prices, RateLimit

STEP_KINDS = tuple(KINDS)

__all__ = [
    "STEP_KINDS", "Agent", "Aggregate", "Breaker", "Budget", "Chain", "Classifier", "Concurrency",
    "Evaluate", "FanOutPolicy", "Gate", "Llm", "ModelCall", "ModelConfig", "Orchestrate",
    "Parallel", "Pipeline", "PipelineSpec", "PipelineStep", "Prices", "RateLimit", "Route", "Step",
    "StepBase", "StepId", "Tool", "Vote", "Wait", "pipeline_from_json",
]


class Pipeline(Strict):
    """A whole pipeline: its input schema, its steps (run in order) and the models it uses."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    steps: list[Step] = Field(min_length=1)
    output: str | None = Field(None, description="template for the run's output; default: last")
    models: dict[str, ModelConfig] = Field(
        default_factory=dict, description="filled from the models file when the pipeline loads"
    )
    budget: Budget | None = None
    cache: Literal["off", "read-write", "replay"] | None = Field(
        None, description="the model response cache; default: the worker's LEGATO_CACHE (off)")
    fuse: bool = Field(True, description="run consecutive llm steps on one queue as one task, "
                       "and a vote's members and an orchestrator's workers in batches (each "
                       "step journaled either way)")

    def content_hash(self) -> str:
        """Hash of the canonical JSON: a run is pinned to exactly this content."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:32]

    # A pinned spec's canonical JSON, made once (`pin`): the graph's index is keyed by it, and
    # every step looks its node up there.
    _canonical: str | None = PrivateAttr(None)

    def canonical_json(self) -> str:
        if self._canonical is not None:
            return self._canonical
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def model_copy(self, *, update: Mapping[str, Any] | None = None,
                   deep: bool = False) -> Pipeline:
        copy = super().model_copy(update=update, deep=deep)
        copy._canonical = None  # a copy may differ (`update`): its JSON is made again
        return copy

    def pin(self) -> Pipeline:
        """Keep this spec's canonical JSON from now on: for a spec that no longer changes (one
        read back from the store, which is content-addressed)."""
        self._canonical = None
        self._canonical = self.canonical_json()
        return self


PipelineSpec = Pipeline
_pipeline_adapter = TypeAdapter(Pipeline)


def pipeline_from_json(text: str) -> Pipeline:
    return _pipeline_adapter.validate_json(text)
