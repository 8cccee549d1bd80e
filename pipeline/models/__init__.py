"""Model providers and the policies around them (see gateway.py for the order they run in)."""

from legato.models.gateway import Gateway, RunScope
from legato.models.openai_compat import Completion, chat
from legato.models.structured import Answer, ask

__all__ = ["Answer", "Completion", "Gateway", "RunScope", "ask", "chat"]
