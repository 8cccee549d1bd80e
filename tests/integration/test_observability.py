"""Worker logs carry run id and step path (text and JSON), and LEGATO_OTEL=1 traces tasks with
OpenTelemetry (console exporter, read back from a real worker's output), model calls as GenAI
spans."""

from __future__ import annotations

import json
import re
import time
import uuid

from legato import Llm, Pipeline
from legato.local import processes


def _wait_for(path, pattern: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace")
        if re.search(pattern, text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not in {path}:\n{text[-3000:]}")


def test_worker_log_lines_name_the_run_and_step(legato, workers, fake):
    run_id = legato.submit("summarize", {"text": "logs should say which run this is"})
    assert legato.wait(run_id, timeout=30).status == "succeeded"
    log = workers["main"].log_path
    # headline, the last step, runs as a segment that also closes the run (no finalize task)
    text = _wait_for(log, rf"succeeded in .* run={run_id} step=headline")
    lines = [line for line in text.splitlines() if f"run={run_id}" in line]
    steps = {re.search(r"step=(\S+)", line).group(1) for line in lines}
    assert {"summary", "length", "headline"} <= steps
    # The model call made inside the step is logged with the step's context too.
    assert any("HTTP Request" in line and "step=summary" in line for line in lines)
    # Lines logged outside any task carry no run id.
    assert any("ready." in line and "run=" not in line for line in text.splitlines())


def test_json_logs_and_opentelemetry_spans(stack_env, legato, fake, tmp_path):
    queue = f"legato.test.otel.{uuid.uuid4().hex[:8]}"
    env = {**stack_env, "LEGATO_LOG_FORMAT": "json", "LEGATO_OTEL": "1",
           "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "legato-test"}
    with processes.worker("otel", [queue], env=env, concurrency=2, log_dir=tmp_path) as worker:
        pipeline = Pipeline(name="traced", steps=[
            Llm(id="hello", model="small", queue=queue, prompt="Say hi to {{ input.who }}")])
        run_id = legato.submit(pipeline, {"who": "tracing"})
        assert legato.wait(run_id, timeout=30).status == "succeeded"
        # one llm step that ends the run: a segment that also closes it
        text = _wait_for(worker.log_path, r'"name": "run/legato.segment"')

    records = []
    for line in text.splitlines():
        if line.startswith("{") and '"level"' in line:
            records.append(json.loads(line))
    mine = [r for r in records if r.get("run_id") == run_id]
    assert mine and all(r["step"] == "hello" for r in mine)
    assert any("succeeded in" in r["message"] for r in mine)

    # The console exporter prints each span as a JSON document (multi-line).
    span_texts = re.findall(r'\{\n    "name": "run/legato.segment".*?\n\}', text, flags=re.S)
    spans = [json.loads(s) for s in span_texts]
    assert spans, text[-2000:]
    attrs = spans[0]["attributes"]
    assert attrs["legato.run_id"] == run_id and attrs["legato.step"] == "hello"
    assert attrs.get("celery.task_name") == "legato.segment"
    assert spans[0]["resource"]["attributes"]["service.name"] == "legato-test"

    # Each model call is a GenAI span (semantic conventions) inside the task's span.
    chat_texts = re.findall(r'\{\n    "name": "chat [^"]*".*?\n\}', text, flags=re.S)
    chats = [json.loads(s) for s in chat_texts]
    assert len(chats) == 1, text[-2000:]
    chat = chats[0]
    gen_ai = {k: v for k, v in chat["attributes"].items() if k.startswith("gen_ai.")}
    assert gen_ai["gen_ai.operation.name"] == "chat" and gen_ai["gen_ai.system"] == "openai"
    assert chat["name"] == f"chat {gen_ai['gen_ai.request.model']}"
    assert gen_ai["gen_ai.usage.input_tokens"] > 0 and gen_ai["gen_ai.usage.output_tokens"] > 0
    assert gen_ai["gen_ai.response.finish_reasons"] == ["stop"]
    assert chat["kind"] == "SpanKind.CLIENT"
    assert chat["attributes"]["legato.step"] == f"{run_id}/hello"
    assert chat["context"]["trace_id"] == spans[0]["context"]["trace_id"]
    assert chat["parent_id"] == spans[0]["context"]["span_id"]
