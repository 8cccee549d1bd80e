"""Legato's default queues: a step runs on its own `queue`, else its enclosing step's, else its
kind's default among these."""

CONTROL = "legato.control"  # routing rules, fan-ins, closing runs, submits
LLM = "legato.llm"  # model calls
TOOLS = "legato.tools"  # tool calls
DEFAULT_QUEUES = (CONTROL, LLM, TOOLS)
