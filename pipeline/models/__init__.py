"""Model providers and the policies around them (see gateway.py for the order they run in)."""

from pipeline.models.gateway import Gateway, RunScope
from pipeline.models.openai_compat import Completion, chat
from pipeline.models.structured import Answer, ask

__all__ = ["Answer", "Completion", "Gateway", "RunScope", "ask", "chat"]
