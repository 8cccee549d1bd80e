"""The peer: the same 3-step pipeline as a LangGraph graph, in-process asyncio, one process.

    python -m bench.peer --url http://127.0.0.1:PORT/v1 --jobs 300 --concurrency 100

Prints one JSON line: jobs, elapsed seconds, jobs/s, CPU seconds, peak RSS. Runs as its own
process so its CPU and memory are its own. Each node is one chat completion over
`httpx.AsyncClient` (`--client aiohttp` for aiohttp), each reading the node before it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict


class State(TypedDict, total=False):
    text: str
    s0: str
    s1: str
    s2: str


Ask = Callable[[str], Awaitable[str]]


def build_graph(ask: Ask) -> Any:
    from langgraph.graph import END, START, StateGraph

    async def s0(state: State) -> State:
        return {"s0": await ask(state["text"])}

    async def s1(state: State) -> State:
        return {"s1": await ask(f"Go on: {state['s0']}")}

    async def s2(state: State) -> State:
        return {"s2": await ask(f"Go on: {state['s1']}")}

    graph = StateGraph(State)
    graph.add_node("s0", s0)
    graph.add_node("s1", s1)
    graph.add_node("s2", s2)
    graph.add_edge(START, "s0")
    graph.add_edge("s0", "s1")
    graph.add_edge("s1", "s2")
    graph.add_edge("s2", END)
    return graph.compile()


def _body(prompt: str) -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": prompt}],
            "temperature": 0, "seed": 0}


async def run(url: str, jobs: int, concurrency: int, client: str) -> dict[str, Any]:
    endpoint = url.rstrip("/") + "/chat/completions"
    if client == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2))

        async def ask(prompt: str) -> str:
            async with session.post(endpoint, json=_body(prompt)) as r:
                r.raise_for_status()
                return str((await r.json())["choices"][0]["message"]["content"])

        close: Callable[[], Awaitable[Any]] = session.close
    else:
        import httpx

        limits = httpx.Limits(max_connections=concurrency * 2,
                              max_keepalive_connections=concurrency * 2)
        http = httpx.AsyncClient(timeout=120, limits=limits)

        async def ask(prompt: str) -> str:
            r = await http.post(endpoint, json=_body(prompt))
            r.raise_for_status()
            return str(r.json()["choices"][0]["message"]["content"])

        close = http.aclose
    graph = build_graph(ask)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await graph.ainvoke({"text": f"job {i}"})

    cpu0 = os.times()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(jobs)))
    elapsed = time.perf_counter() - t0
    cpu1 = os.times()
    await close()
    return {
        "jobs": jobs, "elapsed": elapsed, "jobs_per_s": jobs / elapsed,
        "cpu_user": cpu1.user - cpu0.user, "cpu_system": cpu1.system - cpu0.system,
        "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--client", choices=["httpx", "aiohttp"], default="httpx")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.jobs, args.concurrency, args.client))))


if __name__ == "__main__":
    main()
