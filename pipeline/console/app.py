"""The console's ASGI app: `create_app(settings)`, served by `legato serve` on uvicorn.

Layers, outermost first: security headers, CORS (only when LEGATO_CONSOLE_CORS_ORIGINS names
origins), auth (auth.py), a change must come from a script (auth.py), a cap on request bodies;
then the API (api.py, events.py), the pages (pages.py) and /static.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from legato.client import Legato
from legato.console import api, errors, pages
from legato.console.auth import ChangesFromScripts, Credentials, RequireAuth
from legato.console.state import ConsoleState
from legato.settings import Settings

STATIC = Path(__file__).resolve().parent / "static"  # (an editable install links files)
# Pages run only this origin's scripts; styles may be inline (the report's status colours).
HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self' "
     b"'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
     b"frame-ancestors 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class BodyLimit:
    """413 for a request body over `limit` bytes, 411 for one whose length is not given (a
    chunked upload): bodies here are small JSON, read whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers", ()))
            length = headers.get(b"content-length")
            if length is None and b"transfer-encoding" in headers:
                await _refuse(send, 411, "give the request body's Content-Length")
                return
            if length is not None and (not length.isdigit() or int(length) > self.limit):
                await _refuse(send, 413, f"the request body is over {self.limit} bytes")
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings, *, credentials: Credentials | None,
               legato: Legato | None = None) -> FastAPI:
    """The console for `settings`' store. `credentials` None serves without auth (the CLI
    allows that only with --no-auth)."""
    console = ConsoleState(settings, legato or Legato(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        console.open()
        try:
            yield
        finally:
            await console.close()

    app = FastAPI(title="Legato console", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url="/api/openapi.json",
                  description="Runs of Legato pipelines: submit, watch, cancel, resume, search.")
    app.state.console = console
    errors.install(app)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    # add_middleware wraps: the last added is the outermost.
    app.add_middleware(BodyLimit, limit=2 * settings.max_input_bytes + 64 * 1024)
    app.add_middleware(ChangesFromScripts)
    if credentials is not None:
        app.add_middleware(RequireAuth, credentials=credentials)
    if settings.console_cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.console_cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Last-Event-ID"])
    app.add_middleware(SecurityHeaders)
    return app
