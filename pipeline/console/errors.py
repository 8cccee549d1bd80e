"""Every error the console answers with: one line, as JSON `{"error": ...}` under /api and as a
small page elsewhere — never a traceback, a server path or a setting's value.

    RunNotFound -> 404 · InputError, SpecError, a request's bad field -> 422 (naming the field)
    Conflict (a run in the wrong state) -> 409 · Redis unreachable -> 503 · anything else -> 500
    with a reference to the server's log line, where the traceback is.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response

from legato.errors import InputError, LegatoError, RunNotFound, SpecError

logger = logging.getLogger("legato.console")


class Conflict(LegatoError):
    """The run is not in a state this action applies to (resume a running run, ...)."""


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc) or "request"


def validation_line(exc: RequestValidationError) -> str:
    """The first bad field of a request, as `body.input.text: Field required` (the value given
    is not echoed: it may be large or hostile)."""
    errors = exc.errors()
    if not errors:
        return "the request is malformed"
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{_field(first.get('loc', ()))}: {message}{more}"


def answer(request: Request, status: int, message: str, **headers: str) -> Response:
    if request.url.path.startswith("/api") or request.url.path == "/healthz":
        return JSONResponse({"error": message}, status_code=status, headers=headers or None)
    from legato.console.render import error_page

    return HTMLResponse(error_page(status, message), status_code=status, headers=headers or None)


def install(app: FastAPI) -> None:
    @app.exception_handler(RunNotFound)
    async def _not_found(request: Request, exc: RunNotFound) -> Response:
        return answer(request, 404, str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> Response:
        return answer(request, 409, str(exc))

    @app.exception_handler(InputError)
    @app.exception_handler(SpecError)
    async def _refused(request: Request, exc: LegatoError) -> Response:
        return answer(request, 422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return answer(request, 422, validation_line(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        return answer(request, exc.status_code, detail, **(exc.headers or {}))

    @app.exception_handler(redis.RedisError)
    async def _redis(request: Request, exc: redis.RedisError) -> Response:
        ref = secrets.token_hex(4)
        logger.error("Redis failed (ref %s): %s: %s", ref, type(exc).__name__, exc)
        return answer(request, 503, f"the run store (Redis) is unavailable (ref {ref})")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        ref = secrets.token_hex(4)
        logger.error("internal error (ref %s) on %s %s", ref, request.method,
                     request.url.path, exc_info=exc)
        return answer(request, 500, f"internal error (ref {ref}: the server's log has it)")
