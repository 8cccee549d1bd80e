"""`legato`: submit jobs, look at runs (runs.py), run workers, Flower and the local stack
(stack.py). This module holds the app and what both share.

Exit codes: 0 ok, 1 a run failed (with --wait), 2 bad input (pipeline file, job input, run id).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from legato.client import Legato

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Legato: durable AI orchestration on Celery + Redis.")
out = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def legato_client() -> Legato:
    from legato.client import Legato

    return Legato()


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def read_input(value: str) -> Any:
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"--input is not JSON: {exc}")


def print_run(record: Any, as_json: bool) -> None:
    if as_json:
        out.print_json(data=record.model_dump(mode="json"))
        return
    from legato.report import run_summary

    out.print(run_summary(record))



def main() -> None:
    app()


from legato.cli import runs, stack  # noqa: E402, F401  (register the commands)
