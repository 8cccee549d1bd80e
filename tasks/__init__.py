"""Celery tasks, kept thin, on one base (base.py): unpack the envelope, call the kind's work,
journal, return.

Public task names (stable API): legato.submit, legato.status, legato.llm, legato.segment,
legato.llm_batch, legato.tool, legato.route, legato.aggregate, legato.plan, legato.synthesize,
legato.evaluate, legato.agent, legato.finalize, legato.wait, legato.signal.
"""
