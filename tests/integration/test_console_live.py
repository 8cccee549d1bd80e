"""The console's Server-Sent Events: one `legato serve` process follows 200 concurrent watchers
of a streaming run, and every one of them receives every event of the run's stream, in order,
then `end`; a watcher that reconnects with Last-Event-ID gets exactly the rest. (The time to the
last event is printed, not asserted: figures belong in the bench and the report.)"""

from __future__ import annotations

import asyncio
import json
import time

import httpx

WATCHERS = 200


async def _watch(client: httpx.AsyncClient, path: str, last_id: str | None = None
                 ) -> list[tuple[str, str, dict]]:
    """(id, event, data) of every SSE event until `end`."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    got: list[tuple[str, str, dict]] = []
    async with client.stream("GET", path, headers=headers) as answer:
        assert answer.status_code == 200, await answer.aread()
        assert answer.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in answer.aiter_lines():
            if line == "":
                if "event" in fields:
                    got.append((fields.get("id", ""), fields["event"],
                                json.loads(fields.get("data", "{}"))))
                    if fields["event"] == "end":
                        return got
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
    return got


def test_two_hundred_watchers_each_get_every_event_in_order(console, legato, fake):
    # Slow enough that the watchers join while the run streams: each answer arrives in pieces.
    fake.script({"chunk_chars": 4, "faults": [{"kind": "latency", "ms": 1500, "times": 1},
                                              {"kind": "stream_slow", "ms": 15}]})
    run_id = console.post("/api/runs", {"pipeline": "summarize", "input": {
        "text": "Two hundred people watch this run stream its tokens."}}).json()["run_id"]
    path = f"/api/runs/{run_id}/events"
    limits = httpx.Limits(max_connections=WATCHERS + 10, max_keepalive_connections=0)

    async def everyone() -> tuple[list[list[tuple[str, str, dict]]], float]:
        async with httpx.AsyncClient(base_url=console.url, limits=limits, timeout=120,
                                     headers={"Authorization": f"Bearer {console.token}"}
                                     ) as client:
            began = time.monotonic()
            seen = await asyncio.gather(*(_watch(client, path) for _ in range(WATCHERS)))
            return list(seen), time.monotonic() - began

    seen, took = asyncio.run(everyone())
    assert legato.wait(run_id, timeout=60).status == "succeeded"
    truth = [(e.id, e.type) for e in legato.stream(run_id, follow=False)]
    assert truth[-1][1] == "run_finished" and any(t == "delta" for _, t in truth)
    for events in seen:
        assert [(i, t) for i, t, _ in events] == [*truth, ("", "end")]
    deltas = "".join(d["text"] for _, t, d in seen[0] if t == "delta")
    steps = {s.path: s.output for s in legato.steps(run_id)}
    assert steps["headline"] in deltas and steps["summary"] in deltas
    print(f"\n{WATCHERS} SSE watchers of one run: last event after {took:.2f}s "
          f"({len(truth)} events each)")

    # Reconnecting from the middle: exactly the rest, then `end`.
    middle = truth[len(truth) // 2][0]

    async def again() -> list[tuple[str, str, dict]]:
        async with httpx.AsyncClient(base_url=console.url, timeout=30, headers={
                "Authorization": f"Bearer {console.token}"}) as client:
            return await _watch(client, path, last_id=middle)

    rest = asyncio.run(again())
    assert [(i, t) for i, t, _ in rest] == [*truth[len(truth) // 2 + 1:], ("", "end")]


def test_events_of_unknown_runs_and_bad_ids_are_refused(console):
    assert console.get("/api/runs/nosuchrun/events").status_code == 404
    bad = console.get("/api/runs/nosuchrun/events", headers={"Last-Event-ID": "x<y"})
    assert bad.status_code in (404, 422) and set(bad.json()) == {"error"}


def test_a_page_following_a_run_marks_it_watched_so_its_steps_stream(console, legato):
    """With LEGATO_STREAM=watched (the default), steps stream only while someone follows the
    run: the console's reader marks it watched for as long as a watcher is there."""
    from legato import Llm, Pipeline

    pipeline = Pipeline(name="unserved", steps=[
        Llm(id="ask", model="small", queue="legato.test.nobody-serves", prompt="Hi")])
    run_id = legato.submit(pipeline, {})
    mark = legato.store.keys.watched(run_id)
    assert not legato.store.redis.exists(mark)

    async def follow_a_while() -> bool:
        async with httpx.AsyncClient(base_url=console.url, timeout=30, headers={
                "Authorization": f"Bearer {console.token}"}) as client:
            watching = asyncio.create_task(_watch(client, f"/api/runs/{run_id}/events"))
            for _ in range(200):
                if legato.store.redis.exists(mark):
                    break
                await asyncio.sleep(0.02)
            watching.cancel()
            return bool(legato.store.redis.exists(mark))

    try:
        assert asyncio.run(follow_a_while())
        assert 0 < legato.store.redis.ttl(mark) <= 30
    finally:
        legato.cancel(run_id)
