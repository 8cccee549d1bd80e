"""Flower's Prometheus endpoint (documented in docs/operations.md): Legato's tasks appear by public
name, with runtimes per worker. Note what the test pins down: Flower serves /metrics *without*
basic auth, so it must only be reachable from the monitoring network."""

from __future__ import annotations

import re
import time

import httpx

from tests.integration.test_flower import AUTH, flower  # noqa: F401  (the module's fixture)


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text format -> (metric, labels, value) for every sample line."""
    found = []
    for m in re.finditer(r'^(\w+)\{(.*?)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        found.append((m.group(1), labels, float(m.group(3))))
    return found


def test_flower_metrics_count_legato_tasks_by_public_name(flower, legato, fake):  # noqa: F811
    run_id = legato.submit("summarize", {"text": "metrics, please"})
    assert legato.wait(run_id, timeout=30).status == "succeeded"
    checks = {
        "a legato.llm success counted for main@": lambda name, labels, value: (
            name == "flower_events_total" and labels.get("task") == "legato.llm"
            and labels.get("type") == "task-succeeded"
            and labels.get("worker", "").startswith("main@") and value >= 1),
        "legato.tool runtimes observed": lambda name, labels, value: (
            name == "flower_task_runtime_seconds_count" and labels.get("task") == "legato.tool"
            and value >= 1),
        # Set from worker heartbeats (every 2 s), so it may take a moment after Flower starts.
        "branches@ online": lambda name, labels, value: (
            name == "flower_worker_online" and labels.get("worker", "").startswith("branches@")
            and value == 1),
    }
    deadline = time.monotonic() + 20
    missing = list(checks)
    text = ""
    while missing and time.monotonic() < deadline:
        text = httpx.get(f"{flower}/metrics", timeout=5).text  # no credentials needed
        samples = _samples(text)
        missing = [c for c, ok in checks.items() if not any(ok(*s) for s in samples)]
        time.sleep(0.3)
    assert not missing, (missing, text[-3000:])
    # The rest of Flower does require the credentials.
    assert httpx.get(f"{flower}/api/workers", timeout=5).status_code == 401
    assert httpx.get(f"{flower}/api/workers", auth=AUTH, timeout=5).status_code == 200
