"""The Legato console: an HTTP API (/api, OpenAPI at /api/openapi.json) and web pages over the
run store, served by `legato serve` (FastAPI on uvicorn).

    app.py      the ASGI app and its layers (CORS, auth, changes from scripts, body cap, headers)
    auth.py     bearer token / basic auth from the environment, compared in constant time
    api.py      submit, status, result, steps, cancel, resume, search
    pages.py    the runs list and a run's page; render.py renders them
    errors.py   one-line errors, never a traceback
    state.py    what the process shares (the producer client, asyncio Redis)
    static/     console.js, the pages' one script
"""
