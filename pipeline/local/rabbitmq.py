"""A private, throwaway RabbitMQ node for tests and local runs with RabbitMQ as the broker.

It never touches the machine's own RabbitMQ (5672, its node name, its epmd): it gets its own AMQP
and distribution ports, its own epmd on a free port, its own node name, data and log directories,
an empty env file and no plugins (so no management listener on 15672).

    with RabbitServer() as rabbit:
        os.environ["LEGATO_BROKER_URL"] = rabbit.url     # amqp://guest:guest@127.0.0.1:PORT//
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from legato.local import processes
from legato.local.net import free_port, port_open, wait_for_port

_LIB_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # Debian: the wrapper su's to rabbitmq


def find_rabbitmq_server() -> str | None:
    """The rabbitmq-server start script, or None if RabbitMQ is not installed."""
    if _LIB_SCRIPT.is_file() and os.access(_LIB_SCRIPT, os.X_OK):
        return str(_LIB_SCRIPT)
    return shutil.which("rabbitmq-server")


class RabbitServer:
    def __init__(self, *, startup_timeout: float = 60.0, executable: str | None = None) -> None:
        found = executable or find_rabbitmq_server()
        if found is None:
            raise RuntimeError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        self.executable = found
        self.epmd = shutil.which("epmd") or "epmd"
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.node = f"legato-{self.port}@localhost"
        self.dir = Path(tempfile.mkdtemp(prefix="legato-rabbit-"))
        self.startup_timeout = startup_timeout
        self._epmd = processes.Service(
            "epmd", [self.epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            log_dir=self.dir)
        self._rabbit = processes.Service("rabbitmq", [self.executable], env=self.env(),
                                         ready=r"completed with", log_dir=self.dir, cwd=self.dir)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def log_path(self) -> Path:
        return self._rabbit.log_path

    def env(self) -> dict[str, str]:
        d = self.dir
        return {
            **os.environ,
            "HOME": str(d),  # the Erlang cookie lives here
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
        }

    def start(self) -> RabbitServer:
        d = self.dir
        (d / "enabled_plugins").write_text("[].\n")  # no management plugin, no 15672
        (d / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
        (d / "rabbitmq-env.conf").write_text("")
        for port in (self.port, self.dist_port, self.epmd_port):
            if port_open("127.0.0.1", port):
                raise RuntimeError(f"port {port} is already taken")
        self._epmd.start()
        atexit.register(self.kill)
        try:
            self._rabbit.start(self.startup_timeout)
            wait_for_port("127.0.0.1", self.port, self.startup_timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def log_tail(self, lines: int = 30) -> str:
        return self._rabbit.log_tail(lines)

    def stop(self, timeout: float = 15.0) -> None:
        self._rabbit.stop(timeout)
        self.kill()

    def kill(self) -> None:
        self._rabbit.kill()
        self._epmd.kill()
        atexit.unregister(self.kill)

    def __enter__(self) -> RabbitServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
