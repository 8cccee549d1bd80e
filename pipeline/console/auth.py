"""Who may use the console: a bearer token, or a user and password (HTTP basic auth), from the
environment (LEGATO_CONSOLE_TOKEN; LEGATO_CONSOLE_USER + LEGATO_CONSOLE_PASSWORD).

Every request but `/healthz` must carry one. A browser signs in with basic auth: the configured
user and password, or — with only a token set — any user name and the token as the password.
Secrets are compared in constant time (`hmac.compare_digest`) and every comparison is made, so
neither which part was wrong nor how much of it matched shows in the time taken.

A browser sends basic-auth credentials by itself, also on a request another site's page makes
it send (and with `--no-auth`, any page can reach a console on the machine). So a request that
changes something must prove it came from a script of this origin: it carries a JSON body
(`Content-Type: application/json`, which a cross-site form cannot send, and a cross-site script
cannot either without a CORS preflight, which is off) or a bearer token (which no browser adds
by itself).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from legato.settings import Settings

OPEN_PATHS = frozenset({"/healthz"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REALM = 'Basic realm="Legato console", charset="UTF-8"'


@dataclass(frozen=True)
class Credentials:
    token: str = ""
    user: str = ""
    password: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials | None:
        """The configured credentials, or None when none are set. ValueError for half of a
        user/password pair."""
        token = settings.console_token.get_secret_value() if settings.console_token else ""
        password = (settings.console_password.get_secret_value()
                    if settings.console_password else "")
        user = settings.console_user
        if bool(user) != bool(password):
            missing = "LEGATO_CONSOLE_PASSWORD" if user else "LEGATO_CONSOLE_USER"
            raise ValueError(f"{missing} is not set: basic auth needs both "
                             f"LEGATO_CONSOLE_USER and LEGATO_CONSOLE_PASSWORD")
        if ":" in user:
            raise ValueError("LEGATO_CONSOLE_USER may not contain ':' (basic auth splits there)")
        if not token and not user:
            return None
        return cls(token=token, user=user, password=password)

    def allows(self, authorization: str) -> bool:
        """Whether an Authorization header's value carries these credentials."""
        scheme, _, value = authorization.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer":
            return bool(self.token) and _same(value, self.token)
        if scheme != "basic":
            return False
        try:
            user, colon, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not colon:
            return False
        by_token = bool(self.token) & _same(password, self.token or "\0")
        by_user = bool(self.user) & _same(user, self.user or "\0") & _same(
            password, self.password or "\0")
        return by_token | by_user


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return ""


async def _refuse(send: Send, status: int, message: str, *, challenge: bool) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if challenge:
        headers.append((b"www-authenticate", REALM.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequireAuth:
    """ASGI middleware: 401 without the credentials (and a basic-auth challenge, so a browser
    asks for them)."""

    def __init__(self, app: ASGIApp, credentials: Credentials) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        authorization = _header(scope, b"authorization")
        if not self.credentials.allows(authorization):
            await _refuse(send, 401, "authentication required", challenge=True)
            return
        await self.app(scope, receive, send)


class ChangesFromScripts:
    """ASGI middleware: 403 for a change (not GET/HEAD/OPTIONS) that another site's page may
    have made a browser send: one with neither a JSON body nor a bearer token. Also without
    auth (`--no-auth`), where any page the browser opens could otherwise reach the console."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS and (
                not _from_a_script(scope, _header(scope, b"authorization"))):
            await _refuse(send, 403, "a change needs a JSON body (Content-Type: "
                          "application/json) or a bearer token", challenge=False)
            return
        await self.app(scope, receive, send)


def _from_a_script(scope: Scope, authorization: str) -> bool:
    if authorization.strip().lower().startswith("bearer "):
        return True
    content_type = _header(scope, b"content-type").split(";")[0].strip().lower()
    return content_type == "application/json"
