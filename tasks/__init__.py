"""Celery tasks, kept thin: unpack the envelope, call pipeline code, journal, return.

Public task names (stable API): legato.submit, legato.llm, legato.segment, legato.llm_batch,
legato.tool, legato.route, legato.aggregate, legato.plan, legato.synthesize, legato.evaluate,
legato.agent, legato.finalize.
"""
