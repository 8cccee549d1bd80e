"""How can one worker process hold hundreds of model calls in flight cheaply? Measured.

    python -m bench.transports                      # N = 100, 200, 500 at 200 ms
    python -m bench.transports --n 100 --rounds 5   # smaller

One fake model server (its own process, latency scripted to `--latency-ms`); for each N, each
transport runs in a fresh process that keeps N calls in flight for `--rounds` rounds and reports
calls/s, its CPU per call (user + system), its peak RSS, and how busy the fake server was:

  threads-sync-httpx      N threads, one shared sync httpx.Client  (what the engine does now)
  threads-loop-httpx      N threads parked on futures; one event-loop thread runs httpx.AsyncClient
  threads-loop-aiohttp    the same with aiohttp
  threads-loop-streams    the same with a minimal asyncio-streams HTTP/1.1 client (keep-alive)
  threads-uvloop-aiohttp  threads-loop-aiohttp with uvloop's event loop (if uvloop is installed)
  asyncio-httpx           no threads: N asyncio tasks on httpx.AsyncClient (reference)
  asyncio-aiohttp         no threads: N asyncio tasks on aiohttp (reference)
  asyncio-streams         no threads: N tasks on the minimal client (the ceiling)

Every transport parses the JSON reply, as a model call must. With `--journal`, each call is also
bracketed by two Lua round trips to a private Redis (a begin and an end record, as a step's
journal writes): sync redis-py on the calling thread for the threads-* transports, redis.asyncio
on the loop for the asyncio-* ones. Nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TRANSPORTS = ("threads-sync-httpx", "threads-loop-httpx", "threads-loop-aiohttp",
              "threads-loop-streams", "threads-uvloop-aiohttp", "asyncio-httpx",
              "asyncio-aiohttp", "asyncio-streams")
BODY = json.dumps({"model": "fake", "messages": [{"role": "user", "content": "hello there"}],
                   "temperature": 0, "seed": 0}).encode()


# -- a minimal HTTP/1.1 client on asyncio streams (keep-alive, Content-Length replies only) --------


class StreamsClient:
    """For comparison only: no TLS, no chunked replies, no redirects, no timeouts."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path.rstrip("/") + "/chat/completions"
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                     f"Content-Type: application/json\r\n").encode()

    async def post(self, body: bytes) -> Any:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status = await reader.readline()
        length, keep = 0, True
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        data = await reader.readexactly(length)
        if keep:
            self.idle.append((reader, writer))
        else:
            writer.close()
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(status.decode(errors="replace").strip())
        return json.loads(data)

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


# -- async clients: each returns (post, close) -----------------------------------------------


AsyncPost = Callable[[], Coroutine[Any, Any, Any]]
AsyncClose = Callable[[], Awaitable[Any]]


def _async_client(kind: str, url: str, n: int) -> tuple[AsyncPost, AsyncClose]:
    endpoint = url.rstrip("/") + "/chat/completions"
    if kind == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=n * 2, max_keepalive_connections=n * 2)
        client = httpx.AsyncClient(timeout=120, limits=limits)
        headers = {"Content-Type": "application/json"}

        async def post_httpx() -> Any:
            r = await client.post(endpoint, content=BODY, headers=headers)
            r.raise_for_status()
            return r.json()

        return post_httpx, client.aclose
    if kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n * 2),
                                        headers={"Content-Type": "application/json"})

        async def post_aiohttp() -> Any:
            async with session.post(endpoint, data=BODY) as r:
                r.raise_for_status()
                return json.loads(await r.read())

        return post_aiohttp, session.close
    streams = StreamsClient(url)
    return (lambda: streams.post(BODY)), streams.close


# -- the transports ---------------------------------------------------------------------------


class Budget:
    """Calls per slot, and a wall-clock cap so a slow transport cannot stall the run."""

    def __init__(self, rounds: int, seconds: float) -> None:
        self.rounds = rounds
        self.deadline = time.perf_counter() + seconds
        self.done = 0
        self._lock = threading.Lock()

    def more(self, i: int) -> bool:
        return i < self.rounds and time.perf_counter() < self.deadline

    def count(self) -> None:
        with self._lock:
            self.done += 1


# A step's journal writes, roughly: a begin (record + lease) and an end (record, lease let go).
_BEGIN = ("redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) "
          "redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1]) return 1")
_END = ("redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) "
        "redis.call('ZREM', KEYS[2], ARGV[1]) return 1")
_RECORD = json.dumps({"status": "running", "kind": "llm", "worker": "bench", "attempt": 1})


class SyncJournal:
    """Two EVALSHA round trips a call, from the calling thread (None: no journal)."""

    def __init__(self, url: str | None, n: int) -> None:
        self.client = None
        if url:
            import redis

            self.client = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
                url, max_connections=n))
            self.begin_script = self.client.register_script(_BEGIN)
            self.end_script = self.client.register_script(_END)

    def around(self, slot: int, i: int, call: Callable[[], Any]) -> Any:
        if self.client is None:
            return call()
        member = f"{slot}:{i}"
        self.begin_script(keys=["b:steps", "b:leases"], args=[member, _RECORD, time.time()])
        out = call()
        self.end_script(keys=["b:steps", "b:leases"], args=[member, _RECORD])
        return out


class AsyncJournal:
    """The same on the event loop, with redis.asyncio."""

    def __init__(self, url: str | None, n: int) -> None:
        self.client = None
        if url:
            import redis.asyncio as aredis

            self.client = aredis.Redis(connection_pool=aredis.BlockingConnectionPool.from_url(
                url, max_connections=n))
            self.begin_script = self.client.register_script(_BEGIN)
            self.end_script = self.client.register_script(_END)

    async def around(self, slot: int, i: int, call: Callable[[], Awaitable[Any]]) -> Any:
        if self.client is None:
            return await call()
        member = f"{slot}:{i}"
        await self.begin_script(keys=["b:steps", "b:leases"], args=[member, _RECORD,
                                                                      time.time()])
        out = await call()
        await self.end_script(keys=["b:steps", "b:leases"], args=[member, _RECORD])
        return out


def run_threads_sync(url: str, n: int, budget: Budget, journal: str | None = None) -> None:
    import httpx

    limits = httpx.Limits(max_connections=n * 2, max_keepalive_connections=n * 2)
    client = httpx.Client(timeout=120, limits=limits)
    endpoint = url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}

    steps = SyncJournal(journal, n)

    def call() -> Any:
        r = client.post(endpoint, content=BODY, headers=headers)
        r.raise_for_status()
        return r.json()

    def worker(slot: int) -> None:
        i = 0
        while budget.more(i):
            steps.around(slot, i, call)
            budget.count()
            i += 1

    with ThreadPoolExecutor(n) as pool:
        for f in [pool.submit(worker, slot) for slot in range(n)]:
            f.result()
    client.close()


def run_threads_loop(kind: str, url: str, n: int, budget: Budget, uvloop: bool = False,
                     journal: str | None = None) -> None:
    """N threads (as a Celery threads pool has) parked on futures of one event-loop thread."""
    loop: asyncio.AbstractEventLoop
    if uvloop:
        import uvloop as uv

        loop = uv.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def make() -> tuple[AsyncPost, AsyncClose]:
        return _async_client(kind, url, n)

    post, close = asyncio.run_coroutine_threadsafe(make(), loop).result()

    steps = SyncJournal(journal, n)

    def worker(slot: int) -> None:
        i = 0
        while budget.more(i):
            steps.around(slot, i, lambda: asyncio.run_coroutine_threadsafe(post(), loop).result())
            budget.count()
            i += 1

    with ThreadPoolExecutor(n) as pool:
        for f in [pool.submit(worker, slot) for slot in range(n)]:
            f.result()

    async def closing() -> None:
        await close()

    asyncio.run_coroutine_threadsafe(closing(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def run_asyncio(kind: str, url: str, n: int, budget: Budget, journal: str | None = None) -> None:
    async def main() -> None:
        post, close = _async_client(kind, url, n)
        steps = AsyncJournal(journal, n)

        async def worker(slot: int) -> None:
            i = 0
            while budget.more(i):
                await steps.around(slot, i, post)
                budget.done += 1
                i += 1

        await asyncio.gather(*(worker(slot) for slot in range(n)))
        await close()

    asyncio.run(main())


def one(transport: str, url: str, n: int, rounds: int, seconds: float,
        journal: str | None = None) -> dict[str, Any]:
    kind = transport.rsplit("-", 1)[1]
    cpu0, t0 = os.times(), time.perf_counter()
    budget = Budget(rounds, seconds)
    if transport == "threads-sync-httpx":
        run_threads_sync(url, n, budget, journal)
    elif transport.startswith(("threads-loop-", "threads-uvloop-")):
        run_threads_loop(kind, url, n, budget, uvloop="uvloop" in transport, journal=journal)
    else:
        run_asyncio(kind, url, n, budget, journal)
    wall, cpu1 = time.perf_counter() - t0, os.times()
    calls = budget.done
    return {"transport": _label(transport, journal), "n": n, "calls": calls, "wall": wall,
            "calls_per_s": calls / wall, "cpu_user": cpu1.user - cpu0.user,
            "cpu_system": cpu1.system - cpu0.system,
            "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _label(transport: str, journal: str | None) -> str:
    return transport + ("+journal" if journal else "")


def in_fresh_process(transport: str, url: str, n: int, rounds: int, seconds: float, *,
                     journal: str | None = None, timeout: float = 900) -> dict[str, Any]:
    """`one`, in a process of its own (so transports never share a heap or a loop); its row, or
    {"transport", "n", "error"} with the last line it printed on stderr."""
    argv = [sys.executable, "-m", "bench.transports", "--one", transport, "--url", url,
            "--n", str(n), "--rounds", str(rounds), "--max-seconds", str(seconds),
            *(["--journal-url", journal] if journal else [])]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"transport": _label(transport, journal), "n": n, "error": tail}
    row: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return row


# -- the driver -------------------------------------------------------------------------------


def drive(args: argparse.Namespace) -> list[dict[str, Any]]:
    import httpx

    from bench.stack import cpu_seconds
    from legato.local import processes

    rows = []
    with processes.fake_model() as fake, contextlib.ExitStack() as stack:
        journal = None
        if args.journal:
            from legato.local.redis_server import RedisServer

            journal = stack.enter_context(RedisServer()).url
        url = processes.fake_model_url(fake)
        root = url.removesuffix("/v1")
        httpx.put(f"{root}/_fake/script", json={"latency_ms": args.latency_ms}).raise_for_status()
        for n in args.n:
            for transport in args.transports:
                samples = []
                for _ in range(args.runs):
                    server0 = cpu_seconds(fake.pid) if fake.pid else (0.0, 0.0)
                    row = in_fresh_process(transport, url, n, args.rounds, args.max_seconds,
                                           journal=journal)
                    server1 = cpu_seconds(fake.pid) if fake.pid else (0.0, 0.0)
                    if "error" in row:
                        samples.append(row)
                        break
                    row["server_cpu"] = sum(server1) - sum(server0)
                    samples.append(row)
                ok = [s for s in samples if "error" not in s]
                best = sorted(ok, key=lambda s: s["calls_per_s"])[len(ok) // 2] if ok else (
                    samples[-1])
                rows.append(best)
                print(_line(best, args.latency_ms), flush=True)
    return rows


def _line(r: dict[str, Any], latency_ms: float) -> str:
    if "error" in r:
        return f"| {r['transport']} | {r['n']} | failed: {r['error'][:80]} | | | | | |"
    ideal = r["n"] / (latency_ms / 1000)
    cpu = r["cpu_user"] + r["cpu_system"]
    return (f"| {r['transport']} | {r['n']} | {r['calls_per_s']:.0f} | "
            f"{r['calls_per_s'] / ideal:.0%} | {cpu / r['calls'] * 1000:.2f} | "
            f"{r['cpu_user']:.1f} / {r['cpu_system']:.1f} | "
            f"{cpu / r['wall']:.0%} | {r['server_cpu'] / r['wall']:.0%} | "
            f"{r['max_rss'] / 2**20:.0f} |")


HEADER = ("| transport | N in flight | calls/s | of ideal (N ÷ latency) | client CPU ms/call | "
          "user / sys s | client CPU (of 1 core) | fake server CPU | client peak RSS MiB |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.transports", description=__doc__)
    p.add_argument("--n", type=int, nargs="+", default=[100, 200, 500])
    p.add_argument("--rounds", type=int, default=10, help="calls per in-flight slot")
    p.add_argument("--runs", type=int, default=1, help="repetitions (median kept)")
    p.add_argument("--latency-ms", type=float, default=200)
    p.add_argument("--max-seconds", type=float, default=20,
                   help="stop starting calls after this long (slow transports)")
    have_uvloop = importlib.util.find_spec("uvloop") is not None
    default = [t for t in TRANSPORTS if have_uvloop or "uvloop" not in t]
    p.add_argument("--transports", nargs="+", default=default, choices=TRANSPORTS)
    p.add_argument("--out", type=Path, help="also write the table into this markdown file, "
                   "between <!-- transports:begin --> and <!-- transports:end -->")
    p.add_argument("--journal", action="store_true",
                   help="bracket each call with two Lua round trips to a private Redis")
    p.add_argument("--one", choices=TRANSPORTS, help=argparse.SUPPRESS)
    p.add_argument("--journal-url", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.url, args.n[0], args.rounds, args.max_seconds,
                             args.journal_url)))
        return 0
    intro = (f"Fake model latency {args.latency_ms:g} ms; up to {args.rounds} calls per in-flight "
             f"slot (at most {args.max_seconds:g} s per transport); nproc {os.cpu_count()}; "
             f"median of {args.runs} run(s).")
    print(intro + "\n")
    print(HEADER, flush=True)
    rows = drive(args)
    if args.out:
        from bench.report import write_markdown

        table = "\n".join([HEADER, *(_line(r, args.latency_ms) for r in rows)])
        block = "\n".join(["<!-- transports:begin -->", intro, "", table, "",
                           "<!-- transports:end -->"])
        write_markdown(args.out, block, "<!-- transports:begin -->", "<!-- transports:end -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())
