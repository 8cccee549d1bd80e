"""A real `legato serve` process for the console's tests: on a free port, against the session's
Redis and workers, with a bearer token; `Console` is an httpx client that signs in."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from legato.local import processes
from legato.local.net import free_port


class Console:
    def __init__(self, url: str, token: str, service: processes.Service) -> None:
        self.url = url
        self.token = token
        self.service = service
        self.http = httpx.Client(base_url=url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})

    def get(self, path: str, **kw: object) -> httpx.Response:
        return self.http.get(path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, json: object = None, **kw: object) -> httpx.Response:
        return self.http.post(path, json=json if json is not None else {}, **kw)  # type: ignore[arg-type]

    def wait(self, run_id: str, seconds: float = 30) -> dict:
        answer = self.get(f"/api/runs/{run_id}/result", params={"wait": min(seconds, 60)})
        assert answer.status_code == 200, answer.text
        return answer.json()


@contextmanager
def console_server(env: dict[str, str], log_dir: Path) -> Iterator[Console]:
    token = secrets.token_urlsafe(16)
    port = free_port()
    service = processes.console(port, env=env, token=token, log_dir=log_dir)
    with service:
        console = Console(f"http://127.0.0.1:{port}", token, service)
        try:
            yield console
        finally:
            console.http.close()
