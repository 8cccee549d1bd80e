"""Headless Chromium driven over the DevTools protocol (a websocket, through aiohttp), for the
console's page tests: open a page with a header on every request (the console's credentials),
run JavaScript in it, wait for a condition, click, type, and take screenshots. Debian's
`chromium` package, as the HTML report's test uses."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed: `make install` installs it (apt-get install "
                    "chromium)")
    return found


class Browser:
    """One headless Chromium process and its first page."""

    def __init__(self, tmp_path: Path, *, width: int = 1280, height: int = 900) -> None:
        self.tmp_path = tmp_path
        self.width, self.height = width, height
        self.profile = tmp_path / f"chromium-{time.monotonic_ns()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.dialogs: list[str] = []  # alert/confirm/prompt messages: none, or XSS ran
        self.reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Browser:
        argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}", f"--window-size={self.width},{self.height}",
                "about:blank"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "HOME": str(self.tmp_path)})
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        self.session = aiohttp.ClientSession()
        for _ in range(100):
            async with self.session.get(f"http://127.0.0.1:{port}/json/list") as answer:
                pages = [t for t in await answer.json() if t["type"] == "page"]
            if pages:
                break
            await asyncio.sleep(0.1)
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"],
                                                max_msg_size=64 * 1024 * 1024)
        self.reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        await self.send("Network.enable")
        await self.send("Runtime.enable")
        await self.send("Emulation.setDeviceMetricsOverride",
                        width=self.width, height=self.height, deviceScaleFactor=1, mobile=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.reader:
            self.reader.cancel()
        if self.ws:
            await self.ws.close()
        if self.session:
            await self.session.close()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data and data["id"] in self.pending:
                future = self.pending.pop(data["id"])
                if "error" in data:
                    future.set_exception(RuntimeError(f"{data['error']}"))
                else:
                    future.set_result(data.get("result", {}))
                continue
            self.events.append(data)
            if data.get("method") == "Page.javascriptDialogOpening":
                self.dialogs.append(data["params"]["message"])
                asyncio.ensure_future(self.send("Page.handleJavaScriptDialog", accept=True))

    async def send(self, method: str, **params: Any) -> Any:
        assert self.ws is not None
        number = next(self.ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[number] = future
        await self.ws.send_str(json.dumps({"id": number, "method": method, "params": params}))
        return await asyncio.wait_for(future, 60)

    async def headers(self, headers: dict[str, str]) -> None:
        """Send these headers with every request the page makes (EventSource's and fetch's)."""
        await self.send("Network.setExtraHTTPHeaders", headers=headers)

    async def open(self, url: str) -> None:
        self.events.clear()
        await self.send("Page.navigate", url=url)
        await self.until("document.readyState === 'complete'")

    async def js(self, expression: str) -> Any:
        answer = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                                 returnByValue=True)
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def until(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll `expression` in the page until it is truthy; fail after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.js(expression)
            except RuntimeError:
                value = None  # the page is between documents
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not true after {timeout}s: {expression} (the page's "
                                     f"errors: {self.errors()})")
            await asyncio.sleep(0.1)

    def errors(self) -> list[str]:
        """The page's uncaught exceptions and console errors so far."""
        found = []
        urls = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"}
        for event in self.events:
            if event.get("method") == "Runtime.exceptionThrown":
                details = event["params"]["exceptionDetails"]
                found.append(str(details.get("exception", {}).get("description")
                                 or details.get("text")))
            elif event.get("method") == "Runtime.consoleAPICalled" and (
                    event["params"]["type"] == "error"):
                found.append(" ".join(str(a.get("value", a.get("description")))
                                      for a in event["params"]["args"]))
            elif event.get("method") == "Network.loadingFailed":
                url = urls.get(event["params"]["requestId"], "?")
                found.append(f"load failed: {url}: {event['params'].get('errorText')}")
            elif event.get("method") == "Network.responseReceived" and (
                    event["params"]["response"]["status"] >= 400):
                response = event["params"]["response"]
                found.append(f"{response['status']} from {response['url']}")
        return found

    async def screenshot(self, path: Path) -> Path:
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
