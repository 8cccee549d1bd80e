"""FakeModelServer: routes, counters, and the connection loop."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from legato.local.fake_model.faults import FaultBook
from legato.local.fake_model.httpio import HttpError, Request, encode_response, read_request
from legato.local.fake_model.prompt import parse_chat
from legato.local.fake_model.replies import completion, error_body
from legato.local.fake_model.script import validate_script
from legato.local.fake_model.streaming import Streamed, events, malformed, write

# A JSON answer, a streamed one, or None: drop the connection.
Response = tuple[int, Any, dict[str, str]] | Streamed | None


class Stats:
    """Counters for chat completion requests (admin, health and model listing are not counted)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.max_in_flight = self.in_flight
        self.by_model: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.by_fault: Counter[str] = Counter()
        self.by_step: Counter[str] = Counter()
        self.by_step_ok: Counter[str] = Counter()  # 200 answers per step: calls that completed
        self.by_second: Counter[str] = Counter()  # chat requests per wall-clock second (int)
        self.streamed_by_step: Counter[str] = Counter()  # answers sent as a stream, per step

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_model": dict(self.by_model),
            "by_status": dict(self.by_status),
            "by_fault": dict(self.by_fault),
            "by_step": dict(self.by_step),
            "by_step_ok": dict(self.by_step_ok),
            "by_second": dict(self.by_second),
            "streamed_by_step": dict(self.streamed_by_step),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }


class FakeModelServer:
    """An OpenAI-compatible fake model on asyncio; `script` as documented in the package."""

    def __init__(
        self, script: Mapping[str, Any] | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.host = host
        self.port = port
        self.stats = Stats()
        self.set_script(script)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def set_script(self, script: Mapping[str, Any] | None) -> None:
        """Replace the script (validated first) and clear the fault usage counts."""
        self.script = validate_script(script)
        self.faults = FaultBook(self.script)

    def reset(self) -> None:
        """Clear the counters and the fault usage counts."""
        self.stats.reset()
        self.faults.reset()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while True:
                try:
                    request = await read_request(reader, writer)
                except HttpError as exc:
                    body = error_body(exc.status, str(exc))
                    writer.write(encode_response(exc.status, body, keep_alive=False))
                    break
                if request is None:
                    break
                try:
                    response = await self._dispatch(request)
                except Exception as exc:  # a bug here must not look like a dropped connection
                    response = 500, error_body(500, f"fake model internal error: {exc!r}"), {}
                if response is None:  # fault "drop": no answer at all
                    writer.transport.abort()
                    return
                if isinstance(response, Streamed):
                    if not await write(writer, response, keep_alive=request.keep_alive):
                        return  # fault "stream_drop": cut mid-answer
                    if not request.keep_alive:
                        break
                    continue
                status, payload, headers = response
                writer.write(
                    encode_response(status, payload, keep_alive=request.keep_alive, headers=headers)
                )
                await writer.drain()
                if not request.keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    async def _dispatch(self, request: Request) -> Response:
        route = (request.method, request.path.rstrip("/") or "/")
        if route == ("POST", "/v1/chat/completions"):
            return await self._chat(request)
        if route == ("GET", "/v1/models"):
            rule_models = [r.match.model for r in self.script.rules if r.match.model]
            names = dict.fromkeys([*self.script.models, "fake-model", *rule_models])
            data = [
                {"id": n, "object": "model", "created": 0, "owned_by": "legato-fake"} for n in names
            ]
            return 200, {"object": "list", "data": data}, {}
        if route == ("GET", "/health"):
            return 200, {"status": "ok"}, {}
        if route == ("GET", "/_fake/stats"):
            return 200, self.stats.snapshot(), {}
        if route == ("POST", "/_fake/reset"):
            self.reset()
            return 200, {"ok": True}, {}
        if route == ("PUT", "/_fake/script"):
            try:
                self.set_script(json.loads(request.body or b"{}"))
            except ValueError as exc:  # includes json.JSONDecodeError
                return 400, error_body(400, f"invalid script: {exc}"), {}
            counts = {"rules": len(self.script.rules), "faults": len(self.script.faults)}
            return 200, {"ok": True, **counts}, {}
        known = {
            "/v1/chat/completions",
            "/v1/models",
            "/health",
            "/_fake/stats",
            "/_fake/reset",
            "/_fake/script",
        }
        if route[1] in known:
            return 405, error_body(405, f"method {request.method} not allowed"), {}
        return 404, error_body(404, f"no route for {request.method} {request.path}"), {}

    async def _chat(self, request: Request) -> Response:
        stats = self.stats
        stats.requests += 1
        stats.by_second[str(int(time.time()))] += 1
        step = request.headers.get("x-legato-step")
        if step is not None:
            stats.by_step[step] += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            response = await self._answer(request)
        finally:
            stats.in_flight -= 1
        if response is not None:
            status = 200 if isinstance(response, Streamed) else response[0]
            stats.by_status[str(status)] += 1
            if status == 200 and step is not None:
                stats.by_step_ok[step] += 1
            if isinstance(response, Streamed) and step is not None:
                stats.streamed_by_step[step] += 1
        return response

    async def _answer(self, request: Request) -> Response:
        try:
            chat = parse_chat(request.body)
        except ValueError as exc:
            return 400, error_body(400, str(exc)), {}
        self.stats.by_model[chat.model] += 1
        script = self.script
        decision = self.faults.decide(chat)
        self.stats.by_fault.update(decision.fired)
        if decision.delay_s > 0:
            await asyncio.sleep(decision.delay_s)
        fault = decision.fault
        if fault is not None and fault.kind == "drop":
            return None
        if fault is not None and fault.kind == "status":
            headers = {}
            if fault.retry_after is not None:
                ra = fault.retry_after
                headers["Retry-After"] = str(int(ra)) if float(ra).is_integer() else str(ra)
            return fault.code, error_body(fault.code, fault.body), headers
        broken = fault is not None and fault.kind == "malformed"
        try:
            answer = completion(chat, script, malformed=broken)
        except (ValueError, LookupError, TypeError) as exc:  # e.g. a schema it cannot follow
            return 400, error_body(400, f"fake model cannot answer this request: {exc}"), {}
        if not chat.stream:
            return 200, answer, {}
        streamed = events(answer, chunk_chars=script.chunk_chars,
                          include_usage=chat.include_usage)
        if fault is not None and fault.kind == "stream_malformed":
            streamed = malformed(streamed, fault.after)
        cut = fault.after if fault is not None and fault.kind == "stream_drop" else None
        return Streamed(streamed, decision.event_delay_s, cut)
