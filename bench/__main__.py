"""`python -m bench`: run every measurement, print the table, write docs/benchmarks.{md,png}."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.stack import ROOT

QUICK = dict(runs=1, concurrency=8, chain_steps=3, chains_per_run=1, jobs=8, fanout=8, rt_jobs=3,
             mem_calls=10, mem_latency_ms=1500, latency_ms=50, fanout_latency_ms=20)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes: seconds, not minutes")
    p.add_argument("--runs", type=int, help="repetitions per measurement (default 3)")
    p.add_argument("--concurrency", type=int, help="worker threads = calls in flight (100)")
    p.add_argument("--chain-steps", type=int, help="steps of the overhead chain (20)")
    p.add_argument("--chains-per-run", type=int, help="overhead chains per repetition (5)")
    p.add_argument("--jobs", type=int, help="jobs in the throughput and peer runs (300)")
    p.add_argument("--latency-ms", type=float, help="model latency for throughput (200)")
    p.add_argument("--fanout", type=int, help="calls in the fan-out, at most 1000 (1000)")
    p.add_argument("--fanout-latency-ms", type=float, help="model latency for fan-out (100)")
    p.add_argument("--rt-jobs", type=int, help="jobs for the round-trip count (20)")
    p.add_argument("--mem-calls", type=int, help="calls in flight for the memory reading (500)")
    p.add_argument("--mem-latency-ms", type=float, help="model latency while reading memory")
    p.add_argument("--no-peer", action="store_true", help="skip LangGraph")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                   help="markdown to update (the chart goes beside it, .png)")
    p.add_argument("--no-write", action="store_true", help="print only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from bench import report
    from bench.measure import Config, run_all
    from bench.stack import Stack

    values = dict(QUICK) if args.quick else {}
    for name in ("runs", "concurrency", "chain_steps", "chains_per_run", "jobs", "latency_ms",
                 "fanout", "fanout_latency_ms", "rt_jobs", "mem_calls", "mem_latency_ms"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    cfg = Config(**values, peer=not args.no_peer)
    if not 2 <= cfg.fanout <= 1000:
        print("--fanout must be 2..1000 (a vote's limit)", file=sys.stderr)
        return 2
    with Stack() as stack:
        res = run_all(cfg, stack)
        version = report.redis_version(stack.redis.port)
    print(report.table(res))
    print()
    print(report.every_run(res))
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        png = args.out.with_suffix(".png")
        drew = report.chart(res, png)
        report.write_markdown(args.out, report.markdown(res, version, png.name if drew else None))
        print(f"\nwrote {args.out}" + (f" and {png}" if drew else " (no matplotlib: no chart)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
