"""The console's pages, rendered on the server: the runs list (filters, search, paging, a submit
form) and a run's page (the report's header, timeline and step sections — html_report.py — plus
actions, forms for waiting steps and a panel of live tokens, which static/console.js fills).

Every value from a run (ids, names, inputs, outputs, errors, tags) is data: escaped with the
report's `escape` (markup characters, and control characters shown), in text and attributes
alike; links are built from quoted values. No inline script: the page's Content-Security-Policy
allows scripts from this origin's /static only.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote, urlencode

from legato.envelope import RESUMABLE, RUN_STATUSES, RunRecord, StepRecord
from legato.html_report import COLOURS, CSS, escape, run_body, run_header
from legato.search import RunPage
from legato.spec import Pipeline
from legato.waterfall import preview

CONSOLE_CSS = CSS + """
header.top{display:flex;gap:18px;align-items:baseline;margin:-8px 0 14px;font-size:13px}
header.top a{color:#1d4f91;text-decoration:none}header.top b{font-size:15px}
form.filters{display:flex;flex-wrap:wrap;gap:8px 14px;align-items:end;background:#fff;
border:1px solid #dde1e6;border-radius:6px;padding:10px 12px;margin-bottom:12px}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#555}
input,select,textarea,button{font:13px system-ui,sans-serif;padding:3px 6px}
table.runs{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde1e6}
table.runs th,table.runs td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceff2;
vertical-align:top}table.runs td.id{font:12px ui-monospace,Menlo,monospace}
table.runs .err{color:#b4232a;max-width:420px}
.actions{margin:10px 0;display:flex;gap:8px;align-items:center}
.notice{background:#fff4d6;border:1px solid #e8c766;border-radius:6px;padding:6px 10px}
.problem{background:#fde8e8;border:1px solid #e6a3a3;border-radius:6px;padding:6px 10px}
.tokens .stream{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:6px 0;
padding:6px 10px}.tokens .stream.aborted pre{text-decoration:line-through;color:#999}
.tokens h4{margin:0;font:12px ui-monospace,Menlo,monospace;color:#555}
form.wait{background:#fff;border:2px solid #6a5acd;border-radius:6px;padding:8px 12px;
margin:8px 0;display:flex;flex-direction:column;gap:6px;max-width:760px}
form.wait h3{margin:0;font-size:14px}form.wait label{display:flex;flex-direction:column;
font-size:12px;color:#444}form.wait label.check{flex-direction:row;gap:6px;align-items:center}
form.wait .buttons{display:flex;gap:8px;align-items:center}.said{color:#b4232a}
details.submit{margin-bottom:12px}details.submit summary{cursor:pointer;font-size:13px}
form.submit{display:flex;flex-wrap:wrap;gap:8px 14px;align-items:end;background:#fff;
border:1px solid #dde1e6;border-radius:6px;padding:10px 12px;margin-top:6px}
form.submit label{display:flex;flex-direction:column;font-size:12px;color:#555}
"""
PAGE_SIZE = 50


def _status(status: str) -> str:
    colour = COLOURS.get(status, "#888")
    return f'<span class="status" style="background:{colour}">{escape(status)}</span>'


def _when(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def page(title: str, body: str, *, attrs: str = "") -> str:
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{escape(title)} · Legato console</title><style>{CONSOLE_CSS}</style>'
            f'</head><body{attrs}><header class="top"><b><a href="/">Legato console</a></b>'
            '<a href="/">runs</a><a href="/api/openapi.json">API (OpenAPI)</a></header>'
            f'{body}<script src="/static/console.js"></script></body></html>\n')


def error_page(status: int, message: str) -> str:
    return page(f"error {status}", f'<h1>{status}</h1><p class="problem">{escape(message)}</p>')


def _select(name: str, options: list[str], chosen: str | None, blank: str) -> str:
    items = [f'<option value="">{escape(blank)}</option>'] + [
        f'<option value="{escape(o)}"{" selected" if o == chosen else ""}>{escape(o)}</option>'
        for o in options]
    return f'<select name="{name}">{"".join(items)}</select>'


def _field(label: str, name: str, value: str | None, **attrs: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{escape(v)}"' for k, v in attrs.items())
    return (f'<label>{escape(label)}<input name="{name}" value="{escape(value or "")}"{extra}>'
            f'</label>')


def runs_page(found: RunPage | None, filters: dict[str, str], pipelines: list[str],
              problem: str | None = None) -> str:
    """The runs list: a filter form (GET, so a filtered list is a link), the matching runs
    newest first, and a link to the next page."""
    pick_pipeline = _select("pipeline", pipelines, filters.get("pipeline"), "any")
    pick_status = _select("status", sorted(RUN_STATUSES), filters.get("status"), "any")
    form = ('<form class="filters" method="get" action="/">'
            f'<label>pipeline{pick_pipeline}</label><label>status{pick_status}</label>'
            + _field("tenant", "tenant", filters.get("tenant"), placeholder="default", size="10")
            + _field("priority", "priority", filters.get("priority"), type="number", min="-1000",
                     max="1000", style="width:6em")
            + _field("tags (key=value …)", "tag", filters.get("tag"), placeholder="team=billing")
            + _field("created since (UTC)", "since", filters.get("since"),
                     placeholder="2026-12-01T09:00")
            + _field("until (UTC)", "until", filters.get("until"), placeholder="Unix or ISO")
            + _field("text in input / output / error", "q", filters.get("q"), type="search")
            + '<button type="submit">Search</button></form>')
    form += submit_form(pipelines)
    if problem is not None:
        return page("runs", f'<h1>Runs</h1>{form}<p class="problem" id="problem">'
                            f'{escape(problem)}</p>')
    assert found is not None
    rows = []
    for r in found.runs:
        took = f"{r.finished_at - (r.started_at or r.created_at):.2f}s" if r.finished_at else ""
        tags = " ".join(f'<span class="tag">{escape(k)}={escape(v)}</span>'
                        for k, v in r.tags.items())
        said = r.error or r.waiting or ""
        rows.append(f'<tr class="run" data-run="{escape(r.id)}"><td class="id">'
                    f'<a href="/runs/{quote(r.id, safe="")}">{escape(r.id)}</a></td>'
                    f'<td>{escape(r.pipeline)}</td><td>{_status(r.status)}</td>'
                    f'<td class="tenant">{escape(r.tenant)}</td>'
                    f'<td class="priority">{r.priority}</td><td>{tags}</td>'
                    f'<td>{_when(r.created_at)}</td><td>{took}</td>'
                    f'<td class="err">{escape(preview(said, 120))}</td></tr>')
    scanned = (f"every run in range looked at ({found.scanned})" if found.complete
               else f"the newest {found.scanned} runs in range looked at")
    more = ""
    if found.next_until is not None:
        query = {k: v for k, v in filters.items() if v and k != "until"}
        query["until"] = repr(found.next_until)
        more = f'<p><a id="older" href="/?{escape(urlencode(query))}">older runs →</a></p>'
    table = ('<table class="runs"><tr><th>run</th><th>pipeline</th><th>status</th><th>tenant</th>'
             '<th>priority</th><th>tags</th>'
             f'<th>created (UTC)</th><th>took</th><th>error</th></tr>{"".join(rows)}</table>'
             if rows else '<p class="notice">no run matches</p>')
    return page("runs", f'<h1>Runs</h1>{form}<p class="meta">{len(found.runs)} shown · '
                        f'{scanned}</p>{table}{more}')


def submit_form(pipelines: list[str]) -> str:
    """A job to submit: static/console.js posts it to /api/runs (so the API's checks apply, and
    its one-line error is shown beside the button) and opens the new run's page."""
    pick = _select("pipeline", pipelines, None, "choose…")
    return ('<details class="submit"><summary>Submit a run</summary>'
            '<form class="submit" id="submit" novalidate>'
            f'<label>pipeline{pick}</label>'
            '<label>input (JSON)<textarea name="input" rows="3" cols="48">{}</textarea></label>'
            + _field("tenant", "tenant", "", placeholder="default", size="10")
            + _field("priority", "priority", "", type="number", min="-1000", max="1000",
                     placeholder="0", style="width:6em")
            + _field("tags (key=value …)", "tags", "", placeholder="team=billing")
            + '<button type="submit">Submit</button><span class="said" role="status"></span>'
            '</form></details>')


def run_page(run: RunRecord, steps: list[StepRecord], spec: Pipeline | None,
             outputs: dict[str, Any], waits: str = "") -> str:
    """A run: header, actions, the forms of its waiting steps (`waits`, waiting.py), live
    tokens (while it runs), timeline and steps. The parts the script refreshes have ids:
    run-head, actions, waits, run-body."""
    buttons = []
    if not run.done:
        buttons.append('<button type="button" data-action="cancel">Cancel run</button>')
    if run.status in RESUMABLE:
        buttons.append('<button type="button" data-action="resume">Resume run</button>')
    actions = (f'<div class="actions" id="actions">{"".join(buttons)}'
               '<span id="action-result" role="status"></span></div>')
    waiting = f'<p class="notice">{escape(run.waiting)}</p>' \
        if run.waiting and run.status != "waiting" else ""  # (the header shows a parked step)
    tokens = ('<section class="tokens" id="tokens" hidden><h2>Live output</h2>'
              '<div id="streams"></div></section>')
    waits = waits or '<section id="waits"></section>'
    body = (f'<div id="run-head">{run_header(run)}{waiting}</div>{actions}{waits}{tokens}'
            f'<div id="run-body">{run_body(run, steps, spec, outputs, now=time.time())}</div>')
    attrs = (f' data-run="{escape(run.id)}" data-status="{escape(run.status)}"'
             f' data-done="{"1" if run.done else "0"}"')
    return page(f"{run.pipeline} {run.id[:12]}", body, attrs=attrs)
