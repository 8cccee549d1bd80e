"""`legato`: submit jobs, look at runs (runs.py), run workers, Flower and the local stack
(stack.py). This module holds the app and what both share: the consoles, one-line operator
errors, run ids by unique prefix, and the command line's own Redis connection (short timeouts).

Exit codes (also in `legato --help` and docs/operations.md):
0 ok; 1 a run failed (with --wait), or a replay differs; 2 the operator's input or setup is wrong
(pipeline file, job input, run id, Redis URL or password, unreachable Redis, missing file);
3 --wait timed out with the run still going; 130 interrupted (Ctrl-C); 70 an unexpected internal
error (a bug: LEGATO_DEBUG=1 shows its traceback).
"""

from __future__ import annotations

import json
import os
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import typer
from rich.console import Console
from rich.text import Text

from legato.report import clean

if TYPE_CHECKING:
    from legato.client import Legato
    from legato.settings import Settings

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERNAL = 0, 1, 2, 3, 70
EXIT_CODES = ("Exit codes: 0 ok; 1 a run failed (--wait) or a replay differs; 2 bad input or "
              "setup (pipeline, job input, run id, Redis URL/password, unreachable Redis, missing "
              "file); 3 --wait timed out, the run goes on; 130 interrupted; 70 internal error "
              "(LEGATO_DEBUG=1 shows a traceback).")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Legato: durable AI orchestration on Celery + Redis.\n\n" + EXIT_CODES)
out = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]

# The command line's Redis connection: fail fast instead of riding out an outage (a worker's
# store retries for about half a minute). The read timeout also bounds a TLS handshake, which a
# plain port never answers. A URL's own parameters win (`?socket_timeout=10`).
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 5.0
MAX_INPUT_DEPTH = 100  # nesting levels of a job input given on the command line


def legato_client() -> Legato:
    from legato.client import Legato
    from legato.settings import get_settings

    settings = get_settings()
    return Legato(settings, store=cli_store(settings))


def cli_store(settings: Settings) -> Any:
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    from legato.store import RunStore

    retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3,
                  supported_errors=(redis.ConnectionError,))
    client = redis.Redis.from_url(
        settings.redis_url, decode_responses=True, socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=READ_TIMEOUT, retry=retry, health_check_interval=30)
    return RunStore(client, settings.key_prefix)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err.print(Text.assemble(("error:", "bold red"), " ", clean(message)), highlight=False,
              soft_wrap=True)
    raise typer.Exit(code)


def say(message: str, style: str = "") -> None:
    """A line for the operator that may hold data (ids, names, paths): never markup."""
    out.print(Text(clean(message), style=style), highlight=False, soft_wrap=True)


def read_input(value: str, flag: str = "--input") -> Any:
    """JSON given on the command line, or `@file`; exit 2 naming `flag` if it is not."""
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            text = path.read_text()
        except FileNotFoundError:
            fail(f"{flag} {value}: no such file")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"{flag} {value}: cannot read it: {getattr(exc, 'strerror', None) or exc}")
        where = f"{flag} {value}"
    else:
        text, where = value, flag
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{where} is not JSON: {exc}")
    except RecursionError:
        fail(f"{where}: JSON nested too deeply (the limit is {MAX_INPUT_DEPTH} levels)")
    if depth(data) > MAX_INPUT_DEPTH:
        fail(f"{where}: JSON nested too deeply (the limit is {MAX_INPUT_DEPTH} levels)")
    return data


def depth(value: Any) -> int:
    """Nesting depth of a JSON value (a scalar is 0), without recursion."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        item, level = todo.pop()
        children = item.values() if isinstance(item, dict) else (
            item if isinstance(item, list) else None)
        if children is None:
            continue
        deepest = max(deepest, level + 1)
        if deepest > MAX_INPUT_DEPTH:
            return deepest
        todo.extend((child, level + 1) for child in children)
    return deepest


def resolve_run(legato: Legato, text: str) -> str:
    """A run id from the id or a unique prefix of it (like git). Exits 2 naming the candidates
    of an ambiguous prefix, or saying no run has that id."""
    from legato.errors import RunNotFound

    try:
        legato.store.get_run(text)
        return text
    except RunNotFound:
        pass
    shown = 10
    found = legato.store.run_ids_with_prefix(text, limit=shown + 1) if text else []
    if len(found) == 1:
        return str(found[0])
    if not found:
        fail(f"no run {text!r} (no run id is or starts with it; `legato runs` lists them)")
    more = "" if len(found) <= shown else ", and more"
    fail(f"run id prefix {text!r} is ambiguous: {', '.join(sorted(found)[:shown])}{more}")


def print_run(record: Any, as_json: bool) -> None:
    if as_json:
        print_json(record.model_dump(mode="json"))
        return
    from legato.report import run_summary

    out.print(run_summary(record))


def print_json(data: Any) -> None:
    # ASCII JSON: every control character and escape sequence arrives as a \u escape.
    out.print_json(data=data, ensure_ascii=True, default=str)


def redacted(url: str) -> str:
    """A URL fit for an error message: the password replaced by ***."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return "(unparseable URL)"


def explain(exc: BaseException) -> str | None:
    """One line for an operator error, or None for an unexpected one."""
    import redis

    from legato.errors import LegatoError
    from legato.settings import get_settings

    try:
        settings: Settings | None = get_settings()
    except ValueError:
        settings = None
    if isinstance(exc, LegatoError):
        return str(exc)
    if isinstance(exc, redis.RedisError):
        url = redacted(settings.redis_url) if settings else "LEGATO_REDIS_URL"
        where = f"Redis at {url} (LEGATO_REDIS_URL)"
        cause = exc.__cause__ or exc.__context__
        if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in str(exc) or (
                "WRONGPASS" in str(exc)):
            return f"{where} refused the password: {exc}"
        if isinstance(exc, redis.TimeoutError) and url.startswith("rediss://"):
            return (f"{where} timed out in the TLS handshake: is that port speaking TLS? "
                    f"(rediss:// needs a TLS port; redis:// is plain)")
        if isinstance(cause, ssl.SSLError) or isinstance(exc.__context__, ssl.SSLError):
            return f"{where}: TLS failed: {cause}"
        if isinstance(exc, redis.TimeoutError):
            return f"{where} timed out: {exc}"
        if isinstance(exc, redis.ConnectionError):
            return f"cannot reach {where}: {cause or exc}"
        if isinstance(exc, redis.ResponseError):
            return f"{where} answered with an error: {exc}"
        return f"{where}: {type(exc).__name__}: {exc}"
    if type(exc).__module__.startswith("kombu") and type(exc).__name__ == "OperationalError":
        broker = redacted(settings.broker) if settings else "the broker"
        return (f"cannot reach the broker at {broker} (LEGATO_BROKER_URL, else "
                f"LEGATO_REDIS_URL): {exc}")
    if isinstance(exc, ValueError) and str(exc).startswith("LEGATO_"):
        return str(exc)  # a setting's bad value, named by Settings
    if isinstance(exc, ValueError) and (bad := bad_setting()):
        return bad
    if isinstance(exc, RecursionError):
        return "a pipeline or input nests too deeply (RecursionError)"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return None


def bad_setting() -> str | None:
    """The first LEGATO_* variable whose value its setting cannot take, as NAME=value: reason."""
    from pydantic import ValidationError

    from legato.settings import Settings

    try:
        Settings.from_env()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "LEGATO_" + str(first["loc"][0]).upper() if first["loc"] else "LEGATO_*"
        if first["type"] in ("float_parsing", "int_parsing", "int_from_float"):
            return f"{name}={first.get('input')!r} is not a number"
        return f"{name}={first.get('input')!r}: {first['msg']}"
    return None


def main() -> None:
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - the one place every command's errors end up
        if os.environ.get("LEGATO_DEBUG", "") not in ("", "0"):
            import traceback

            traceback.print_exception(exc)
        line = explain(exc)
        if line is not None:
            err.print(Text.assemble(("error:", "bold red"), " ", clean(line)), highlight=False,
                      soft_wrap=True)
            sys.exit(EXIT_USAGE)
        err.print(Text.assemble(("internal error:", "bold red"), " ",
                                clean(f"{type(exc).__name__}: {exc}"),
                                " (LEGATO_DEBUG=1 shows the traceback)"),
                  highlight=False, soft_wrap=True)
        sys.exit(EXIT_INTERNAL)


from legato.cli import evals, runs, serve, stack  # noqa: E402, F401  (register the commands)
