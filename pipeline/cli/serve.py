"""`legato serve`: the console — an HTTP API and web pages over the run store (legato.console),
on uvicorn, in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer

from legato.cli import app, err, fail
from legato.settings import get_settings

NO_AUTH = ("legato serve would start with no authentication: set LEGATO_CONSOLE_TOKEN (a bearer "
           "token), or LEGATO_CONSOLE_USER and LEGATO_CONSOLE_PASSWORD (basic auth); or pass "
           "--no-auth for local use")


@app.command()
def serve(
    port: int = 8000,
    address: Annotated[str, typer.Option(help="the address to listen on")] = "127.0.0.1",
    no_auth: Annotated[bool, typer.Option(
        "--no-auth", help="serve with no authentication (local use only: anyone who reaches "
        "the port may submit, cancel and read every run)")] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn's: debug, info, warning")] = "info",
) -> None:
    """Serve the console: runs, live tokens, approvals, and its API (/api, /api/openapi.json).

    Needs authentication from the environment: LEGATO_CONSOLE_TOKEN (Authorization: Bearer; a
    browser signs in with any user name and the token as password), or LEGATO_CONSOLE_USER and
    LEGATO_CONSOLE_PASSWORD (basic auth); refuses to start without one unless given --no-auth.
    """
    import uvicorn

    from legato.console.app import create_app
    from legato.console.auth import Credentials

    settings = get_settings()
    try:
        credentials = Credentials.from_settings(settings)
    except ValueError as exc:
        fail(str(exc))
    if credentials is None and not no_auth:
        fail(NO_AUTH)
    if credentials is not None and no_auth:
        fail("--no-auth with console credentials set: drop one of them")
    if credentials is None:
        err.print(f"warning: serving with no authentication on {address}:{port}",
                  style="yellow", markup=False, highlight=False)
    console = create_app(settings, credentials=credentials)
    uvicorn.run(console, host=address, port=port, log_level=log_level, server_header=False,
                proxy_headers=False, timeout_graceful_shutdown=5)
