"""`legato demo` prints every run's id beside its result, starts Flower with a fresh password
and the console with a fresh token, and stops cleanly on Ctrl-C: every process it started is
gone."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from legato.local.net import port_open

ROOT = Path(__file__).resolve().parents[2]


def _still_running(text: str) -> str:
    """What a demo that does not stop is waiting for: its services' processes and log tails."""
    logs = re.search(r"logs: (\S+)", text)
    ps = subprocess.run(["ps", "-eo", "pid,ppid,etime,args"], capture_output=True, text=True)
    alive = [line for line in ps.stdout.splitlines() if "legato" in line or "celery" in line]
    tails = []
    for log in sorted(Path(logs.group(1)).glob("*.log")) if logs else ():
        tails.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace")
                                                       .splitlines()[-15:]))
    return "\n".join([*alive, *tails])


def test_demo_with_the_fake_model_runs_everything_and_stops_on_ctrl_c(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEGATO_")}
    out_path = tmp_path / "demo.out"
    with open(out_path, "w") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "legato.cli", "demo", "--model", "fake", "--keep"],
            cwd=ROOT, env={**env, "COLUMNS": "120"}, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "press Ctrl-C" not in out_path.read_text() and time.monotonic() < deadline:
            assert demo.poll() is None, out_path.read_text()
            time.sleep(0.2)
        text = out_path.read_text()
        examples = [p for p in (ROOT / "pipelines").glob("*.yaml") if p.stem != "models"]
        assert text.count("· succeeded ·") == len(examples), text
        # each result shows its run's full id, inside its panel (where no width cuts it)
        shown = re.findall(r"│ run ([0-9a-f]{32}) +│", text)
        assert len(set(shown)) == len(examples), text
        assert re.search(r"Flower: http://127\.0\.0\.1:\d+ \(user demo, password \S+\)", text)
        # the approval flow waited for a person: the demo approved it, saying how
        approved = (r"waited at approve; the demo approved it: legato signal [0-9a-f]{32} approve "
                    r"--data '\{\"approved\": true, \"reviewer\": \"demo\"\}' --by demo")
        assert re.search(approved, " ".join(text.split())), text
        redis_port = int(re.search(r"redis: redis://127\.0\.0\.1:(\d+)/0", text).group(1))
        flower_port = int(re.search(r"Flower: http://127\.0\.0\.1:(\d+)", text).group(1))
        assert port_open("127.0.0.1", redis_port) and port_open("127.0.0.1", flower_port)
        shown_console = re.search(r"Console: (http://127\.0\.0\.1:\d+) \(any user, password "
                                  r"(\S+);", text)
        assert shown_console, text
        console_url, token = shown_console.groups()
        runs = httpx.get(f"{console_url}/api/runs", headers={"Authorization": f"Bearer {token}"})
        assert runs.status_code == 200
        top = [r for r in runs.json()["runs"] if not r.get("parent_run")]  # not child runs
        assert len(top) == len(examples)
        assert httpx.get(f"{console_url}/api/runs").status_code == 401

        demo.send_signal(signal.SIGINT)
        try:
            code = demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not stop within 60 s:\n{_still_running(text)}")
        assert code == 0
        assert "stopped" in out_path.read_text()
        assert not port_open("127.0.0.1", redis_port)
        assert not port_open("127.0.0.1", flower_port)
        assert not port_open("127.0.0.1", int(console_url.rsplit(":", 1)[1]))
    finally:
        if demo.poll() is None:  # SIGTERM stops the demo's stack too; SIGKILL would not
            demo.terminate()
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                demo.kill()
