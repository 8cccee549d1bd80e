"""`legato model-server`, the command the compose file's `model` service runs: llama.cpp's
OpenAI-compatible server with SmolLM2, on the host and port it is given."""

from __future__ import annotations

import sys

import httpx
import pytest

from legato.local import processes
from legato.local.model_server import llama_server_missing
from legato.local.net import free_port

pytestmark = pytest.mark.local_model


def test_model_server_command_serves_the_local_model(tmp_path):
    if missing := llama_server_missing():
        pytest.fail(f"llama-cpp-python[server] is not installed (missing {', '.join(missing)}): "
                    "`make install` installs it (the local-model extra)", pytrace=False)
    port = free_port()
    argv = [sys.executable, "-m", "legato.cli", "model-server", "--host", "127.0.0.1",
            "--port", str(port)]
    service = processes.Service("model-server", argv, ready=r"Uvicorn running on",
                                log_dir=tmp_path)
    service.start(timeout=120)
    try:
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
    finally:
        service.stop()
    assert [m["id"] for m in models["data"]] == ["smollm2"]
