"""The console's web pages: `/` (runs, filtered and searched by query string, and a form to submit
one) and `/runs/{id}`. Actions on them (submit, cancel, resume, a waiting step's answer) go
through the API, from static/console.js."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from legato.console import render
from legato.console.api import RunId, State, moment
from legato.console.waiting import waiting_steps, waits_section
from legato.errors import InputError
from legato.loader import available_pipelines
from legato.search import RunQuery, find_runs
from legato.tags import parse_tags

router = APIRouter(include_in_schema=False)
Text = Annotated[str, Query(max_length=200)]


@router.get("/", response_class=HTMLResponse)
def runs(st: State, pipeline: Text = "", status: Text = "", tenant: Text = "",
         priority: Text = "", tag: Text = "", since: Text = "", until: Text = "", q: Text = ""
         ) -> HTMLResponse:
    filters = {"pipeline": pipeline, "status": status, "tenant": tenant, "priority": priority,
               "tag": tag, "since": since, "until": until, "q": q}
    pipelines = available_pipelines(st.legato.settings.pipelines_dir)
    try:
        query = RunQuery.checked(pipeline=pipeline or None, status=status or None,
                         tenant=tenant or None, priority=_level(priority),
                         tags=parse_tags(tag.split(), option="tags"),
                         since=moment(since, "since"), until=moment(until, "until"),
                         text=q or None, limit=render.PAGE_SIZE)
    except InputError as exc:
        return HTMLResponse(render.runs_page(None, filters, pipelines, str(exc)), 422)
    found = find_runs(st.legato.store, query)
    return HTMLResponse(render.runs_page(found, filters, pipelines))


def _level(text: str) -> int | None:
    if text.strip() == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise InputError(f"priority: {text[:40]!r} is not an integer") from None


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run(run_id: RunId, st: State) -> HTMLResponse:
    record = st.legato.status(run_id)
    store = st.legato.store
    try:
        spec = store.get_spec(record.spec_hash)
    except KeyError:  # a pinned spec is kept, but a pruned store may lack it
        spec = None
    forms = waits_section(waiting_steps(store, run_id, spec)) if not record.done else ""
    page = render.run_page(record, st.legato.steps(run_id), spec, store.get_outputs(run_id),
                           forms)
    return HTMLResponse(page)
