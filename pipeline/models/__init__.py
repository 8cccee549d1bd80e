"""Model providers: one wire implementation for every OpenAI-compatible server, plus policy."""

from pipeline.models.openai_compat import Completion, chat
from pipeline.models.structured import Answer, ask

__all__ = ["Answer", "Completion", "ask", "chat"]
