"""Legato: durable AI orchestration on Celery + Redis.

The public API: pipelines as data (the step kinds below, or YAML files), the producer client, the
error hierarchy, and the wire types a run is reported in.
"""

from legato.client import Legato
from legato.envelope import RunRecord, StepRecord, StepResult, Usage
from legato.errors import (
    BudgetExceeded,
    Cancelled,
    GateFailed,
    InputError,
    LegatoError,
    OutputInvalid,
    PermanentError,
    RunNotFound,
    SpecError,
    StepError,
    TransientError,
)
from legato.loader import load_pipeline
from legato.spec import (
    Agent,
    Aggregate,
    Breaker,
    Budget,
    Chain,
    Classifier,
    Concurrency,
    Evaluate,
    Gate,
    Llm,
    ModelCall,
    ModelConfig,
    Orchestrate,
    Parallel,
    Pipeline,
    Prices,
    RateLimit,
    Route,
    Tool,
    Vote,
)
from legato.tenants import Policies, TenantPolicy, load_policies
from legato.tools import tool

__all__ = [
    "Agent",
    "Aggregate",
    "Breaker",
    "Budget",
    "BudgetExceeded",
    "Cancelled",
    "Chain",
    "Classifier",
    "Concurrency",
    "Evaluate",
    "Gate",
    "GateFailed",
    "InputError",
    "Legato",
    "LegatoError",
    "Llm",
    "ModelCall",
    "ModelConfig",
    "Orchestrate",
    "OutputInvalid",
    "Parallel",
    "PermanentError",
    "Pipeline",
    "Policies",
    "Prices",
    "RateLimit",
    "Route",
    "RunNotFound",
    "RunRecord",
    "SpecError",
    "StepError",
    "StepRecord",
    "StepResult",
    "TenantPolicy",
    "Tool",
    "TransientError",
    "Usage",
    "Vote",
    "load_pipeline",
    "load_policies",
    "tool",
]
