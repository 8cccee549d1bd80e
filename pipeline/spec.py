"""Pipelines as data: step kinds as a pydantic union tagged by `kind`, and PipelineSpec.

The same models are the Python API (`Pipeline(steps=[Llm(...)])`) and what YAML files parse into.
Loading from files, model-alias resolution and cross-step checks live in `loader.py`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

StepId = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Prices(_Strict):
    """What a model costs, in currency units per million tokens."""

    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)


class RateLimit(_Strict):
    """A cluster-wide limit on one model alias: token buckets in Redis shared by every worker.

    In any window of `per` seconds at most `requests` calls (and about `tokens` tokens) start.
    """

    requests: int | None = Field(None, ge=1, description="requests per window (e.g. RPM)")
    tokens: int | None = Field(None, ge=1, description="tokens per window (e.g. TPM)")
    per: float = Field(60.0, gt=0, description="the window, in seconds")


class Breaker(_Strict):
    """A circuit breaker per provider (base_url + model), shared through Redis."""

    failures: int = Field(5, ge=1, description="consecutive failed attempts that open it")
    cooldown: float = Field(30.0, gt=0, description="seconds open before a half-open probe")


class ModelConfig(_Strict):
    """A model alias resolved: where to call, what to ask for, and where its key lives."""

    base_url: str
    model: str
    protocol: Literal["openai", "anthropic"] = "openai"
    fallbacks: list[str] = Field(default_factory=list, description="aliases tried in order")
    max_attempts: int = Field(4, ge=1, le=20, description="HTTP attempts per model, retries incl.")
    max_retry_wait: float = Field(60.0, ge=0, description="total seconds of backoff per model")
    breaker: Breaker | None = Field(default_factory=lambda: Breaker(failures=5, cooldown=30.0))
    rate_limit: RateLimit | None = None
    prices: Prices | None = None
    api_key_env: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = None
    structured_output: Literal["json_schema", "json_object"] = Field(
        "json_schema",
        description="how to ask for schema output: OpenAI's json_schema response format, or "
        "json_object with the schema (llama.cpp's server) and the schema stated in the prompt",
    )


class Gate(_Strict):
    """A check on a step's output; when it is false the chain stops with `message`."""

    check: str = Field(description="Jinja expression over output, input and outputs")
    message: str = "gate failed"


class ModelCall(_Strict):
    """One model call: a model alias, a prompt template, optionally a system prompt and schema."""

    model: str
    prompt: str
    system: str | None = None
    output_schema: dict[str, Any] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    max_repairs: int = Field(2, ge=0, le=10, description="re-asks when output fails its schema")


class _StepBase(_Strict):
    id: StepId
    queue: str | None = None
    gate: Gate | None = None


class Llm(_StepBase, ModelCall):
    kind: Literal["llm"] = "llm"


class Tool(_StepBase):
    kind: Literal["tool"] = "tool"
    tool: str
    args: dict[str, Any] = Field(default_factory=dict, description="string values are templates")


class Chain(_StepBase):
    kind: Literal["chain"] = "chain"
    steps: list[Step] = Field(min_length=1)


class Classifier(_Strict):
    """Picks a branch: a model (its output is constrained to the branch names) or a rule."""

    model: str | None = None
    prompt: str | None = None
    system: str | None = None
    rule: str | None = Field(None, description="Jinja expression that yields a branch name")
    min_confidence: float | None = Field(
        None, ge=0, le=1, description="below it, escalate (or take the route's default)")
    escalate_to: str | None = Field(None, description="a larger model alias to ask when unsure")

    @model_validator(mode="after")
    def _one_way(self) -> Classifier:
        if (self.rule is None) == (self.model is None):
            raise ValueError("give either `rule` or `model` with `prompt`")
        if self.model is not None and not self.prompt:
            raise ValueError("a model classifier needs a `prompt`")
        if self.min_confidence is not None and self.model is None:
            raise ValueError("`min_confidence` needs a model classifier")
        if self.escalate_to is not None and self.min_confidence is None:
            raise ValueError("`escalate_to` needs `min_confidence`")
        return self


class Route(_StepBase):
    kind: Literal["route"] = "route"
    classifier: Classifier
    branches: dict[StepId, Step] = Field(min_length=1)
    default: str | None = None

    @model_validator(mode="after")
    def _default_is_a_branch(self) -> Route:
        if self.default is not None and self.default not in self.branches:
            raise ValueError(f"default {self.default!r} is not one of the branches")
        return self


class Aggregate(_Strict):
    """How a parallel step combines its branches' outputs."""

    method: Literal["concat", "merge", "majority", "llm"] = "concat"
    model: str | None = None
    prompt: str | None = None
    system: str | None = None
    output_schema: dict[str, Any] | None = None
    separator: str = "\n\n"

    @model_validator(mode="after")
    def _llm_needs_model(self) -> Aggregate:
        if self.method == "llm" and not (self.model and self.prompt):
            raise ValueError("method `llm` needs `model` and `prompt`")
        return self


class Vote(_Strict):
    step: Llm
    n: int = Field(3, ge=2, le=1000)
    quorum: int | None = Field(
        None, ge=1, description="once this many voters agree, the voters not yet begun skip")

    @model_validator(mode="after")
    def _quorum_fits(self) -> Vote:
        if self.quorum is not None and self.quorum > self.n:
            raise ValueError(f"quorum {self.quorum} is more than the {self.n} voters")
        return self


class _FanOutPolicy(_Strict):
    on_failure: Literal["fail", "skip"] = "fail"
    min_success: int | None = Field(None, ge=1, description="with on_failure: skip; default 1")


class Parallel(_StepBase, _FanOutPolicy):
    kind: Literal["parallel"] = "parallel"
    sections: list[Step] | None = None
    vote: Vote | None = None
    aggregate: Aggregate = Aggregate()

    @model_validator(mode="after")
    def _sections_or_vote(self) -> Parallel:
        if (self.sections is None) == (self.vote is None):
            raise ValueError("give either `sections` or `vote`")
        if self.sections is not None and not self.sections:
            raise ValueError("`sections` is empty")
        return self


class Orchestrate(_StepBase, _FanOutPolicy):
    kind: Literal["orchestrate"] = "orchestrate"
    planner: ModelCall
    worker: ModelCall
    synthesizer: ModelCall
    max_subtasks: int = Field(5, ge=1, le=100, description="per round")
    max_rounds: int = Field(
        1, ge=1, le=10, description="after each round the planner may add subtasks, seeing "
        "`results`; an empty list ends the rounds")


class Evaluate(_StepBase):
    """Evaluator-optimizer: generate, have it judged, revise with the feedback — until it passes,
    `max_rounds` is reached, or a round scores no better than the best so far."""

    kind: Literal["evaluate"] = "evaluate"
    generator: ModelCall
    evaluator: ModelCall
    max_rounds: int = Field(3, ge=1, le=20)
    min_score: float | None = Field(None, description="a score this high passes too")


class Agent(_StepBase):
    """A model that calls tools until it answers: one task per turn, the turn's tool calls in
    parallel, at most `max_turns` turns (and the run's budget)."""

    kind: Literal["agent"] = "agent"
    model: str
    prompt: str
    system: str | None = None
    tools: list[str] = Field(default_factory=list, description="registered tool names")
    max_turns: int = Field(6, ge=1, le=50)
    params: dict[str, Any] = Field(default_factory=dict)


Step = Annotated[
    Union[Llm, Tool, Chain, Route, Parallel, Orchestrate, Evaluate, Agent],  # noqa: UP007
    Field(discriminator="kind"),
]
STEP_KINDS = ("llm", "tool", "chain", "route", "parallel", "orchestrate", "evaluate", "agent")

for _model in (Chain, Route, Parallel):
    _model.model_rebuild()


class Budget(_Strict):
    """Limits on one run's model use; when one is spent the run stops with BudgetExceeded."""

    max_tokens: int | None = Field(None, ge=1)
    max_cost: float | None = Field(None, gt=0, description="from the models' `prices`")
    max_calls: int | None = Field(None, ge=1)
    deadline_seconds: float | None = Field(None, gt=0, description="from the run's creation")


class Pipeline(_Strict):
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

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


PipelineSpec = Pipeline
_pipeline_adapter = TypeAdapter(Pipeline)


def pipeline_from_json(text: str) -> Pipeline:
    return _pipeline_adapter.validate_json(text)
