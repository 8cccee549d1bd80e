"""Benchmarks: Legato against raw Celery (same Redis, same pool) and a peer, in one run.

    python -m bench            # or `make bench`; writes docs/benchmarks.md and docs/benchmarks.png
    python -m bench --quick    # tiny sizes, seconds
    python -m bench.transports # the model-call path alternatives, in one process

Benchmarks are not tests: nothing here asserts a timing. `tests/integration/test_bench_smoke.py`
runs the harness at tiny sizes and checks that every row is produced.
"""
