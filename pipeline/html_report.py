"""A run as one self-contained HTML page: summary, a timeline chart (inline SVG) and every step's
input and output. No scripts, fonts, images or styles from anywhere else: the file can be mailed,
attached to a ticket or opened offline.

    legato report RUN_ID --html run.html

A step's *input* is what it was given: the templates it rendered (from the run's pinned spec) and
the earlier outputs those templates read (from the journal). Prompts are not journaled after
rendering, so the page shows the template beside the values it saw.
"""

from __future__ import annotations

import json
import re
import time
from html import escape as _html_escape
from typing import Any

from legato import graph, tree
from legato.envelope import RunRecord, StepRecord
from legato.report import clean
from legato.spec import Pipeline
from legato.waterfall import Span, decision, timeline


def escape(text: str) -> str:
    """Text as HTML data: markup-significant characters escaped, and control characters and
    escape sequences shown (`\\x1b[31m`), never passed on raw."""
    return _html_escape(clean(str(text)))

COLOURS = {"succeeded": "#2e9d4f", "failed": "#d0343b", "running": "#e0a800", "queued": "#3b82c4",
           "cancelled": "#a040a0", "skipped": "#9aa0a6", "waiting": "#6a5acd"}
_ROW, _LABEL, _CHART = 26, 260, 820

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2329;
background:#fafbfc}
h1{font-size:20px;margin:0 0 6px}h2{font-size:16px;margin:28px 0 8px}
.meta{color:#555}.status{font-weight:600;padding:1px 8px;border-radius:10px;color:#fff}
.chart{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:8px;overflow-x:auto}
.step{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:10px 0;padding:10px 14px}
.step h3{font-size:15px;margin:0 0 6px;font-family:ui-monospace,Menlo,monospace}
.facts{color:#444;font-size:13px}.facts span{margin-right:14px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:12px;margin-top:8px}
pre{background:#f3f5f7;border-radius:4px;padding:8px;margin:4px 0;white-space:pre-wrap;
word-break:break-word;font:12px/1.4 ui-monospace,Menlo,monospace;max-height:360px;overflow:auto}
.error{color:#b4232a;font-weight:600}.label{font-size:12px;color:#666;text-transform:uppercase}
.tag{background:#e8edf2;border-radius:8px;padding:1px 7px;font:12px ui-monospace,Menlo,monospace}
table.calls{border-collapse:collapse;font-size:12px;margin:4px 0}
table.calls td,table.calls th{border-bottom:1px solid #e3e6ea;padding:2px 8px;text-align:left}
"""


def _json(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def step_inputs(spec: Pipeline, outputs: dict[str, Any], path: str) -> dict[str, Any]:
    """The templates a step rendered and the earlier outputs they read (best effort)."""
    index = graph.index(spec)
    node_path = re.sub(r"\[\d+\]", "", path)
    while node_path and node_path not in index:  # orchestrate's `plan` / `worker` members
        node_path = node_path.rpartition("/")[0]
    node = index.get(node_path)
    if node is None:
        return {}
    found: dict[str, Any] = {}
    templates = {field: text for field, text, _ in tree.templates(node.step)}
    if templates:
        found["templates"] = templates
    read = {name: outputs[name] for name in node.reads if name in outputs}
    if read:
        found["outputs read"] = read
    return found


def timeline_svg(spans: list[Span], total: float) -> str:
    height = _ROW * len(spans) + 34
    width = _LABEL + _CHART + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="timeline" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'font-family="ui-monospace,Menlo,monospace" font-size="12">']
    ticks = 5
    for i in range(ticks + 1):
        x = _LABEL + _CHART * i / ticks
        parts.append(f'<line x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="{height - 22}" '
                     f'stroke="#e3e6ea"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" fill="#666">'
                     f'{total * i / ticks:.2f}s</text>')
    for row, sp in enumerate(spans):
        y = 6 + row * _ROW
        s = sp.record
        x = _LABEL + sp.start / total * _CHART
        w = max(2.0, sp.took / total * _CHART)
        colour = COLOURS.get(s.status, "#888")
        label = escape("\u2002" * sp.depth + s.path.rsplit("/", 1)[-1])
        parts.append(f'<g class="span" data-path="{escape(s.path)}" '
                     f'data-status="{escape(s.status)}">'
                     f'<title>{escape(s.path)}: {escape(s.status)}, {sp.took:.3f}s on '
                     f'{escape(s.queue or "?")} / {escape(s.worker or "?")}</title>'
                     f'<text x="4" y="{y + 15}" fill="#1d2329">{label}</text>'
                     f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{_ROW - 8}" rx="3" '
                     f'fill="{colour}"/>'
                     f'<text x="{min(x + w + 4, width - 60):.1f}" y="{y + 15}" fill="#555">'
                     f'{sp.took:.2f}s</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def model_calls(record: StepRecord) -> str:
    """A step's model calls as a table: each model tried, its outcome, each HTTP attempt (status
    or error, seconds, the wait after it), rate-limit waits and cache hits; then any repairs."""
    rows = []
    for call in record.model_calls:
        tries = call.attempts or []
        said = "; ".join(
            f"{a.status or a.error or '?'} in {a.seconds:.3f}s"
            + (f", waited {a.wait:.2f}s" if a.wait else "") for a in tries)
        if call.cached:
            said = f"cache {call.cached}" + (f"; {said}" if said else "")
        if call.rate_limited:
            said += f" (rate limited {call.rate_limited:.2f}s)"
        rows.append(f"<tr><td>{escape(call.model)}</td><td>{escape(call.outcome or 'calling')}"
                    f"</td><td>{len(tries)}</td><td>{escape(said)}</td></tr>")
    repairs = "".join(f"<li>repair {r.attempt}: {escape(r.error)}</li>" for r in record.repairs)
    if not rows and not repairs:
        return ""
    table = ('<table class="calls"><tr><th>model</th><th>outcome</th><th>attempts</th>'
             f'<th>each attempt</th></tr>{"".join(rows)}</table>') if rows else ""
    return (f'<div class="label">model calls</div>{table}'
            + (f'<ul class="repairs">{repairs}</ul>' if repairs else ""))


def step_section(sp: Span, inputs: dict[str, Any]) -> str:
    s = sp.record
    colour = COLOURS.get(s.status, "#888")
    facts = [("kind", s.kind), ("queue", s.queue or "—"), ("worker", s.worker or "—"),
             ("start", f"+{sp.start:.3f}s"), ("took", f"{sp.took:.3f}s"),
             ("attempt", str(s.attempt))]
    if s.usage.calls:
        facts.append(("tokens", f"{s.usage.prompt_tokens} in / {s.usage.completion_tokens} out"))
    if s.usage.cost:
        facts.append(("cost", f"{s.usage.cost:.6g}"))
    fact_html = "".join(f"<span><b>{k}</b> {escape(v)}</span>" for k, v in facts)
    error = f'<p class="error">{escape(s.error_type or "error")}: {escape(s.error)}</p>' \
        if s.error else ""
    out = _json(s.output) if s.output is not None else "—"
    detail = f'<div class="label">detail</div><pre>{escape(_json(s.detail))}</pre>' \
        if s.detail else ""
    return (f'<section class="step" id="step-{escape(s.path)}" data-path="{escape(s.path)}">'
            f'<h3>{escape(s.path)} <span class="status" style="background:{colour}">'
            f'{escape(s.status)}</span></h3><div class="facts">{fact_html}</div>'
            f'<p>{escape(decision(s))}</p>{error}'
            f'<div class="cols"><div><div class="label">input</div>'
            f'<pre class="input">{escape(_json(inputs) if inputs else "—")}</pre></div>'
            f'<div><div class="label">output</div><pre class="output">{escape(out)}</pre>'
            f'{model_calls(s)}{detail}</div></div></section>')


def run_header(run: RunRecord) -> str:
    """The run's name and state, a summary line, its input and its output or error."""
    colour = COLOURS.get(run.status, "#888")
    took = f"{run.finished_at - (run.started_at or run.created_at):.2f}s" \
        if run.finished_at else "(not finished)"
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run.created_at))
    u = run.usage
    summary = (f'<p class="meta">run <code>{escape(run.id)}</code> · created {created} · took '
               f'{took} · {u.calls} model calls · {u.prompt_tokens} tokens in / '
               f'{u.completion_tokens} out{f" · cost {u.cost:.6g}" if u.cost else ""} · spec '
               f'{escape(run.spec_hash[:12])}</p>')
    if run.parent_run:
        summary += (f'<p class="meta">child of run <code>{escape(run.parent_run)}</code>, step '
                    f'<code>{escape(run.parent_step or "")}</code></p>')
    waiting = f'<p class="waiting" id="run-waiting">{escape(run.waiting)}</p>' \
        if run.status == "waiting" and run.waiting else ""
    result = waiting + (f'<p class="error">{escape(run.error)}</p>' if run.error else
              f'<div class="label">output</div><pre id="run-output">{escape(_json(run.output))}'
              f'</pre>' if run.done or run.output is not None else "")
    tags = "".join(f'<span class="tag">{escape(k)}={escape(v)}</span> '
                   for k, v in run.tags.items())
    return (f'<h1>{escape(run.pipeline)} <span class="status" style="background:{colour}">'
            f'{escape(run.status)}</span></h1>{summary}'
            + (f'<p class="tags">{tags}</p>' if tags else "")
            + f'<div class="label">input</div><pre id="run-input">{escape(_json(run.input))}'
            f'</pre>{result}')


def run_body(run: RunRecord, steps: list[StepRecord], spec: Pipeline | None = None,
             outputs: dict[str, Any] | None = None, now: float | None = None) -> str:
    """The timeline and every step's section (what the report and the console's run page
    share)."""
    spans, total = timeline(run, steps, now)
    outputs = outputs or {}
    step_sections = "".join(
        step_section(sp, step_inputs(spec, outputs, sp.record.path) if spec else {})
        for sp in spans)
    return (f'<h2>Timeline</h2><div class="chart">{timeline_svg(spans, total)}</div>'
            f'<h2>Steps ({len(steps)})</h2>{step_sections}')


def render_html(run: RunRecord, steps: list[StepRecord], spec: Pipeline | None = None,
                outputs: dict[str, Any] | None = None) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<title>Legato run {escape(run.id)} · {escape(run.pipeline)}</title>'
        f'<style>{CSS}</style></head><body>{run_header(run)}'
        f'{run_body(run, steps, spec, outputs)}</body></html>\n'
    )
