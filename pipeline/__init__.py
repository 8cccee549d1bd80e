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
    SignalRefused,
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
    Wait,
)
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
    "Prices",
    "RateLimit",
    "Route",
    "RunNotFound",
    "RunRecord",
    "SignalRefused",
    "SpecError",
    "StepError",
    "StepRecord",
    "StepResult",
    "Tool",
    "TransientError",
    "Usage",
    "Vote",
    "Wait",
    "load_pipeline",
    "tool",
]
