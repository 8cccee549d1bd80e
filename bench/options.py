"""A benchmark's command line from its config dataclass: one flag per field, `--quick`, `--out`."""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

from bench.stack import ROOT

C = TypeVar("C")


def parser(prog: str, description: str | None, defaults: Any, *, quick: str,
           skip: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """`--quick`, `--out` and a flag for each field of `defaults` but `skip` (which the caller
    adds itself, with a type of its own)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--quick", action="store_true", help=quick)
    for name, value in asdict(defaults).items():
        if name not in skip:
            p.add_argument(f"--{name.replace('_', '-')}", type=type(value), help=f"({value})")
    p.add_argument("--out", type=Path, help="markdown to update (default docs/benchmarks.md)")
    return p


def config(args: argparse.Namespace, base: C) -> C:
    """`base` with each field the command line set."""
    given = {k: getattr(args, k) for k in asdict(base) if getattr(args, k, None) is not None}
    return replace(base, **given)  # type: ignore[type-var]


def out_path(args: argparse.Namespace) -> Path | None:
    """Where to write: `--out`, else docs/benchmarks.md — nothing for a quick run."""
    return args.out or (None if args.quick else ROOT / "docs" / "benchmarks.md")
