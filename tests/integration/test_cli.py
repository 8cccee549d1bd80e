"""The `legato` command line, run as a real subprocess against the test stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def legato_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "legato.cli", *args], cwd=ROOT,
                          env={**os.environ, **env, "COLUMNS": "200"}, capture_output=True,
                          text=True, timeout=60)


def test_submit_wait_status_show_and_runs(stack_env, workers, fake):
    done = legato_cli("submit", "summarize", "--input", "@pipelines/summarize.input.json",
                      "--wait", "--json", env=stack_env)
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["status"] == "succeeded" and run["pipeline"] == "summarize"

    status = legato_cli("status", run["id"], "--json", env=stack_env)
    assert json.loads(status.stdout)["output"] == run["output"]

    show = legato_cli("show", run["id"], env=stack_env)
    assert show.returncode == 0, show.stderr
    for expected in ("summary", "length", "headline", "legato.llm", "legato.tools", "main@",
                     "succeeded"):
        assert expected in show.stdout

    listed = legato_cli("runs", "--json", "--limit", "5", env=stack_env)
    assert run["id"] in [r["id"] for r in json.loads(listed.stdout)]


def test_a_failed_run_exits_1_and_shows_its_reason(stack_env, workers, fake):
    fake.script({"faults": [{"kind": "status", "code": 400, "body": "context length exceeded"}]})
    failed = legato_cli("submit", "summarize", "--input", '{"text": "x y z"}', "--wait",
                        env=stack_env)
    assert failed.returncode == 1
    assert "error: summary: " in failed.stdout and "(HTTP 400)" in failed.stdout
    assert "context length exceeded" in failed.stdout
    listed = legato_cli("runs", "--status", "failed", "--json", env=stack_env)
    assert all(r["status"] == "failed" for r in json.loads(listed.stdout))


def test_bad_pipeline_file_exits_2_naming_file_and_path(stack_env, tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("steps:\n  - {kind: llm, id: a, model: small, prompt: hi}\n"
                   "  - {kind: teleport, id: b}\n")
    result = legato_cli("submit", str(bad), env=stack_env)
    assert result.returncode == 2
    assert f"{bad}:steps[1].kind: unknown step kind 'teleport'" in " ".join(result.stderr.split())

    missing_step = tmp_path / "dangling.yaml"
    missing_step.write_text("steps:\n  - {kind: llm, id: a, model: small, "
                            "prompt: '{{ outputs.ghost }}'}\n")
    result = legato_cli("validate", str(missing_step), env=stack_env)
    assert result.returncode == 2
    assert "steps[0].prompt: template names step 'ghost', which does not exist" in " ".join(
        result.stderr.split())


def test_bad_input_and_unknown_run_exit_2(stack_env):
    refused = legato_cli("submit", "summarize", "--input", '{"words": 1}', env=stack_env)
    assert refused.returncode == 2 and "text: Field required" in refused.stderr
    not_json = legato_cli("submit", "summarize", "--input", "{oops", env=stack_env)
    assert not_json.returncode == 2 and "--input is not JSON" in not_json.stderr
    unknown = legato_cli("status", "no-such-run", env=stack_env)
    assert unknown.returncode == 2 and "no run 'no-such-run'" in unknown.stderr


def test_cancel_and_resume_from_the_command_line(stack_env, workers, fake):
    fake.script({"faults": [{"kind": "status", "code": 400, "body": "refused once", "times": 1}]})
    failed = legato_cli("submit", "summarize", "--input", '{"text": "resume me"}', "--wait",
                        "--json", env=stack_env)
    assert failed.returncode == 1
    run_id = json.loads(failed.stdout)["id"]

    resumed = legato_cli("resume", run_id, "--wait", env=stack_env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "succeeded" in resumed.stdout
    again = legato_cli("resume", run_id, env=stack_env)
    assert again.returncode == 2 and "only failed or cancelled runs resume" in again.stderr
    done = legato_cli("cancel", run_id, env=stack_env)
    assert done.returncode == 0 and "had already finished" in done.stdout
    unknown = legato_cli("cancel", "no-such-run", env=stack_env)
    assert unknown.returncode == 2 and "no run 'no-such-run'" in unknown.stderr
