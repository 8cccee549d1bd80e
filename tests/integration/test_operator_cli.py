"""The operator's command line, as real subprocesses against the test stack: run ids by unique
prefix, --wait timeouts, views that fit 80 columns and pipes, hostile text shown as data, and
operator errors as one line (exit 2, no traceback)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from legato.local.net import free_port
from legato.local.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")
# Markup, colour and title escapes, a one-byte CSI, a bidi override, an emoji code.
HOSTILE = ("[/bold] [red]boom[/] [link=http://x]y[/link] \x1b[31mRED\x1b[0m \x1b]0;pwned\x07 "
           "\x9b2J \u202eevil :warning: end")
RAW = ("\x1b", "\x9b", "\u202e", "\x07")


def cli(*args: str, env: dict[str, str], columns: int | None = 200, timeout: float = 60,
        **extra: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, **extra}
    full.pop("COLUMNS", None)
    full.pop("LEGATO_DEBUG", None)
    if columns is not None:
        full["COLUMNS"] = str(columns)
    full.update(extra)
    return subprocess.run([sys.executable, "-m", "legato.cli", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- run ids by unique prefix ------------------------------------------------------------------


def _unique_prefix(run_id: str, every: list[str]) -> str:
    for n in range(1, len(run_id) + 1):
        if sum(other.startswith(run_id[:n]) for other in every) == 1:
            return run_id[:n]
    return run_id


def test_every_run_id_argument_takes_a_unique_prefix(stack_env, legato, fake, tmp_path):
    # 17 runs: two of them share a first hex digit (pigeonhole), an ambiguous prefix.
    ids = [legato.submit("summarize", {"text": f"prefix {i} a b c"}) for i in range(17)]
    for run_id in ids:
        assert legato.wait(run_id, timeout=30).status == "succeeded"
    every = legato.store.redis.zrange(legato.store.keys.runs, 0, -1)
    target = ids[0]
    prefix = _unique_prefix(target, every)
    assert len(prefix) < len(target)

    status = cli("status", prefix, "--json", env=stack_env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["id"] == target
    show = cli("show", prefix, "--json", env=stack_env)
    assert json.loads(show.stdout)["run"]["id"] == target
    page = tmp_path / "run.html"
    report = cli("report", prefix, "--html", str(page), env=stack_env)
    assert report.returncode == 0 and target in page.read_text()
    cancel = cli("cancel", prefix, env=stack_env)
    assert cancel.returncode == 0 and f"{target} had already finished" in cancel.stdout
    resume = cli("resume", prefix, env=stack_env)
    assert resume.returncode == 2 and f"run {target} is succeeded" in resume.stderr
    replay = cli("replay", prefix, env=stack_env)  # (not recorded: it differs, but it ran)
    assert f"replayed {target} as " in replay.stdout, replay.stdout + replay.stderr

    first = {}
    for run_id in ids:
        first.setdefault(run_id[0], []).append(run_id)
    digit, sharing = next((d, s) for d, s in first.items() if len(s) >= 2)
    ambiguous = one_line_error(cli("status", digit, env=stack_env))
    assert f"run id prefix '{digit}' is ambiguous" in ambiguous
    listed = RUN_ID.findall(ambiguous)
    assert listed and all(r.startswith(digit) for r in listed)
    assert len(listed) == 10 or set(sharing) <= set(listed)

    unknown = one_line_error(cli("show", "nosuchrun", env=stack_env))
    assert "no run 'nosuchrun'" in unknown


# -- --wait --timeout ------------------------------------------------------------------------


def test_a_wait_that_times_out_exits_3_with_one_line(stack_env, workers, fake, tmp_path):
    fake.script({"faults": [{"kind": "latency", "ms": 4000, "match": {"contains": "slowpoke"}}]})
    result = cli("submit", "summarize", "--input", '{"text": "slowpoke a b c"}', "--wait",
                 "--timeout", "0.5", env=stack_env)
    line = one_line_error(result, code=3)
    run_id = RUN_ID.search(line).group()
    assert line.startswith("timed out after 0.5s: run ") and "still" in line
    assert result.stdout == ""
    batch = tmp_path / "slow.jsonl"
    batch.write_text('{"text": "slowpoke one"}\n{"text": "slowpoke two"}\n')
    result = cli("submit", "summarize", "--input", f"@{batch}", "--wait", "--timeout", "0.5",
                 env=stack_env)
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "timed out after 0.5s: 2 of 2 runs are still going (they go on; `legato runs` lists "
        "them)")
    later = cli("submit", "summarize", "--input", '{"text": "x y z"}', "--wait", "--timeout",
                "30", env=stack_env)
    assert later.returncode == 0, later.stderr
    # the run went on after the command gave up on it
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done = json.loads(cli("status", run_id, "--json", env=stack_env).stdout)
        if done["status"] == "succeeded":
            break
        time.sleep(0.3)
    assert done["status"] == "succeeded"
    helped = cli("--help", env=stack_env)
    assert "3 --wait timed out" in " ".join(helped.stdout.split())


# -- 80 columns and pipes ----------------------------------------------------------------------


def test_show_and_runs_fit_80_columns_and_a_pipe_without_cutting_ids(stack_env, legato, fake):
    triage = legato.submit("support_triage",
                           json.loads((ROOT / "pipelines/support_triage.input.json").read_text()))
    vote = legato.submit("sentiment_vote",
                         json.loads((ROOT / "pipelines/sentiment_vote.input.json").read_text()))
    for run_id in (triage, vote):
        assert legato.wait(run_id, timeout=30).done
    for columns in (80, None):  # None: no COLUMNS at all, as in a pipe
        listed = cli("runs", "--limit", "5", env=stack_env, columns=columns)
        assert listed.returncode == 0, listed.stderr
        assert triage in listed.stdout and vote in listed.stdout
        assert max(len(line) for line in listed.stdout.splitlines()) <= 80
        for run_id in (triage, vote):
            show = cli("show", run_id, env=stack_env, columns=columns)
            assert show.returncode == 0, show.stderr
            lines = show.stdout.splitlines()
            assert max(len(line) for line in lines) <= 80, show.stdout
            steps = legato.steps(run_id)
            for step in steps:
                leaf = step.path.rsplit("/", 1)[-1]
                assert any(line.strip().startswith(leaf + " ") or line.strip() == leaf
                           for line in lines), (leaf, show.stdout)
                for name in (step.queue, step.worker):
                    assert not name or name in show.stdout, (name, show.stdout)
            assert "…" not in "".join(line for line in lines if "·" in line
                                      and "{" not in line and "→" not in line)
    wide = cli("runs", "--limit", "5", env=stack_env, columns=200)
    assert triage in wide.stdout and "┃ pipeline" in wide.stdout


# -- hostile text is data ----------------------------------------------------------------------


def test_hostile_text_in_inputs_outputs_and_errors_is_shown_as_data(stack_env, legato, fake,
                                                                      tmp_path):
    # An output that echoes the input (the fake model repeats its prompt).
    echoed = legato.submit("summarize", {"text": HOSTILE})
    assert legato.wait(echoed, timeout=30).status == "succeeded"
    # A provider error that carries it.
    fake.script({"faults": [{"kind": "status", "code": 400, "body": HOSTILE}]})
    provider = legato.submit("summarize", {"text": "a b c"})
    assert legato.wait(provider, timeout=30).status == "failed"
    fake.reset()
    # A tool error that carries the job input, in a pipeline named with markup.
    pipeline = tmp_path / "hostile.yaml"
    pipeline.write_text(json.dumps({
        "name": "[bold]hostile[/bold]", "input_schema": {"type": "object"},
        "steps": [{"kind": "tool", "id": "boom", "tool": "explode",
                   "args": {"text": "{{ input.text }}"}}]}))
    tool = legato.submit(str(pipeline), {"text": "[/bold]\x1b[2J" + HOSTILE})
    tool_run = legato.wait(tool, timeout=30)
    assert tool_run.status == "failed" and "[/bold]" in (tool_run.error or "")
    assert "[/bold]" in (legato.status(provider).error or "")

    outputs = []
    for columns in (80, 200):
        for args in (("runs",), ("runs", "--status", "failed")):
            listed = cli(*args, env=stack_env, columns=columns)
            assert listed.returncode == 0, listed.stderr
            assert tool in listed.stdout and "[/bold]" in listed.stdout
            outputs.append(listed)
        for run_id in (echoed, provider, tool):
            for args in (("status", run_id), ("show", run_id)):
                shown = cli(*args, env=stack_env, columns=columns)
                assert shown.returncode == 0, shown.stderr
                outputs.append(shown)
    status = cli("status", echoed, env=stack_env)
    assert "[red]boom[/]" in status.stdout and r"\x1b[31mRED\x1b[0m" in status.stdout
    assert r"\x9b2J" in status.stdout and r"\u202eevil" in status.stdout
    assert ":warning:" in status.stdout
    assert "[bold]hostile[/bold]" in cli("status", tool, env=stack_env).stdout
    for run_id in (echoed, provider, tool):
        page = tmp_path / f"{run_id}.html"
        report = cli("report", run_id, "--html", str(page), env=stack_env)
        assert report.returncode == 0, report.stderr
        outputs.append(report)
        html = page.read_text()
        assert "<script" not in html and "[/bold]" in html
        assert not [raw for raw in RAW if raw in html]
        assert "\\x1b[31mRED" in html or "\\u001b[31mRED" in html  # (as text, or in JSON)
    again = cli("submit", "summarize", "--input", json.dumps({"text": HOSTILE}), "--wait",
                env=stack_env, columns=80)
    assert again.returncode == 0, again.stderr
    outputs.append(again)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"text": "batch " + HOSTILE}) + "\n")
    batch = cli("submit", str(pipeline), "--input", f"@{jobs}", env=stack_env)
    assert batch.returncode == 0, batch.stderr
    assert "submitting to [bold]hostile[/bold]" in batch.stderr  # the bar's label is data too
    outputs.append(batch)
    refused = cli("submit", "[/bold]\x1b[2J", env=stack_env)
    line = one_line_error(refused)
    assert line.startswith("error: [/bold]\\x1b[2J: unknown pipeline"), line
    outputs.append(refused)
    as_json = cli("status", echoed, "--json", env=stack_env)
    assert json.loads(as_json.stdout)["input"]["text"] == HOSTILE
    outputs.append(as_json)
    for result in outputs:
        for raw in RAW:
            assert raw not in result.stdout + result.stderr, (result.args, raw)
        assert "Traceback" not in result.stderr


# -- operator errors are one line ------------------------------------------------------------


def test_operator_errors_are_one_line_exit_2_naming_what_is_wrong(stack_env, redis_server,
                                                                   tmp_path):
    missing = one_line_error(cli("submit", "summarize", "--input", "@nowhere.json",
                                 env=stack_env))
    assert missing == "error: --input @nowhere.json: no such file"
    batch = one_line_error(cli("submit", "summarize", "--input", "@nowhere.jsonl",
                               env=stack_env))
    assert batch == "error: --input @nowhere.jsonl: no such file"
    deep = tmp_path / "deep.json"
    for text in ("[" * 100_000 + "]" * 100_000,
                 json.dumps({"text": "x", "more": json.loads("[" * 150 + "]" * 150)})):
        deep.write_text(text)
        line = one_line_error(cli("submit", "summarize", "--input", f"@{deep}", env=stack_env))
        assert f"--input @{deep}: JSON nested too deeply" in line

    lines = tmp_path / "deep.jsonl"
    lines.write_text('{"text": "fine"}\n' + json.dumps({"text": "x", "more": json.loads(
        "[" * 150 + "]" * 150)}) + "\n")
    line = one_line_error(cli("submit", "summarize", "--input", f"@{lines}", env=stack_env))
    assert line.startswith(f"error: --input @{lines}: input 2: JSON nested too deeply")

    deep_yaml = tmp_path / "deep.yaml"
    deep_yaml.write_text("steps: " + "[" * 5000 + "]" * 5000 + "\n")
    for command in ("validate", "submit"):
        line = one_line_error(cli(command, str(deep_yaml), env=stack_env))
        assert line == f"error: {deep_yaml}:line 1: refused: nested deeper than 64 levels"

    nobody = f"redis://127.0.0.1:{free_port()}/0"
    line = one_line_error(cli("runs", env=stack_env, LEGATO_REDIS_URL=nobody))
    assert line.startswith(f"error: cannot reach Redis at {nobody} (LEGATO_REDIS_URL)")

    tls = stack_env["LEGATO_REDIS_URL"].replace("redis://", "rediss://")
    line = one_line_error(cli("status", "abc", env=stack_env, LEGATO_REDIS_URL=tls))
    assert "LEGATO_REDIS_URL" in line and "TLS" in line

    password = "right-" + uuid.uuid4().hex[:8]
    with RedisServer(password=password) as guarded:
        wrong = guarded.url.replace(password, "wrong-horse")
        line = one_line_error(cli("runs", env=stack_env, LEGATO_REDIS_URL=wrong))
        assert "refused the password" in line and "LEGATO_REDIS_URL" in line
        assert "wrong-horse" not in line and ":***@" in line
        no_password = re.sub(r"//:[^@]*@", "//", guarded.url)
        line = one_line_error(cli("runs", env=stack_env, LEGATO_REDIS_URL=no_password))
        assert "refused the password" in line
        debug = cli("runs", env=stack_env, LEGATO_REDIS_URL=wrong, LEGATO_DEBUG="1")
        assert debug.returncode == 2 and "Traceback" in debug.stderr

    bad = one_line_error(cli("runs", env=stack_env, LEGATO_HTTP_TIMEOUT="soon"))
    assert bad == "error: LEGATO_HTTP_TIMEOUT='soon' is not a number"
    for target in ("models", "pipelines/models.yaml"):
        for command in ("submit", "validate"):
            line = one_line_error(cli(command, target, env=stack_env))
            assert "models.yaml is the models file, not a pipeline" in line


# -- Flower's auth ---------------------------------------------------------------------------


def _first_answer(url: str, timeout: float = 30) -> httpx.Response:
    """GET `url` once the server listens (a Service is ready before its port may be)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_flower_refuses_to_start_without_auth_unless_told(stack_env, tmp_path):
    port = free_port()
    env = {k: v for k, v in stack_env.items()}
    refused = cli("flower", "--port", str(port), env=env, FLOWER_BASIC_AUTH="")
    line = one_line_error(refused)
    assert "FLOWER_BASIC_AUTH" in line and "--insecure-no-auth" in line
    malformed = one_line_error(cli("flower", "--port", str(port), env=env,
                                   FLOWER_BASIC_AUTH="just-a-user"))
    assert "user:password" in malformed


    from legato.local.processes import Service

    service = Service("flower-open", [sys.executable, "-m", "legato.cli", "flower", "--port",
                                      str(port), "--insecure-no-auth"],
                      env={**env, "FLOWER_BASIC_AUTH": ""}, ready=r"Visit me at|Registered tasks",
                      log_dir=tmp_path)
    with service:
        reply = _first_answer(f"http://127.0.0.1:{port}/")
        assert reply.status_code == 200 and "Flower" in reply.text  # the UI is open, as asked

    secret = "pw-" + uuid.uuid4().hex[:10]
    given = [([], {"FLOWER_BASIC_AUTH": f"ops:{secret}"}),  # the environment, as documented
             (["--basic-auth", f"ops:{secret}"], {"FLOWER_BASIC_AUTH": ""})]  # or the option
    for options, auth_env in given:
        argv = [sys.executable, "-m", "legato.cli", "flower", "--port", str(port), *options]
        service = Service("flower-auth", argv, env={**env, **auth_env},
                          ready=r"Visit me at|Registered tasks", log_dir=tmp_path)
        with service:
            assert service.pid is not None
            # Flower is the same process (exec'd): its command line never holds the password.
            cmdline = Path(f"/proc/{service.pid}/cmdline").read_bytes().decode()
            assert "flower" in cmdline and secret not in cmdline
            reply = _first_answer(f"http://127.0.0.1:{port}/")
            assert reply.status_code == 401
            assert httpx.get(f"http://127.0.0.1:{port}/", auth=("ops", secret),
                             timeout=5).status_code == 200


# -- refused jobs in the worker's log -------------------------------------------------------


def test_a_refused_job_is_one_warning_line_in_the_worker_log(legato, workers):
    log_path = workers["main"].log_path
    cases = [({"pipeline": "summarize", "input": {"words": 1}}, "InputError", "'summarize'"),
             ({"pipeline": "no_such_pipeline", "input": {}}, "SpecError", "'no_such_pipeline'")]
    for kwargs, error, named in cases:
        tracebacks = log_path.read_text().count("Traceback")
        result = legato.app.send_task("legato.submit", kwargs=kwargs, queue="legato.control")
        try:
            result.get(timeout=20)
        except Exception as exc:  # the client still gets the task's failure, by its type
            assert type(exc).__name__ == error, repr(exc)
        else:
            raise AssertionError("the refused job succeeded")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            mine = [line for line in log_path.read_text().splitlines() if result.id in line]
            if any("refused a job" in line for line in mine):
                break
            time.sleep(0.2)
        warnings = [line for line in mine if "WARNING" in line]
        assert len(warnings) == 1, mine
        assert "refused a job: run=- pipeline=" + named in warnings[0] and error in warnings[0]
        assert not [line for line in mine if "ERROR" in line or "CRITICAL" in line], mine
        assert log_path.read_text().count("Traceback") == tracebacks


# -- a wait outlives a Redis restart -------------------------------------------------------


def test_a_wait_rides_out_a_redis_restart(stack_env, fake, tmp_path):
    """The command line fails fast on a Redis it cannot reach, but once a run is submitted its
    --wait rides out Redis going away and coming back (a restart, data kept by AOF)."""
    from legato.compile import DEFAULT_QUEUES
    from legato.local import processes

    fake.script({"faults": [{"kind": "latency", "ms": 2500, "match": {"contains": "restart"}}]})
    with RedisServer() as server:
        env = {**stack_env, "LEGATO_REDIS_URL": server.url}
        with processes.worker("restart", list(DEFAULT_QUEUES), env=env, log_dir=tmp_path):
            waiting = subprocess.Popen(
                [sys.executable, "-m", "legato.cli", "submit", "summarize", "--input",
                 '{"text": "restart me"}', "--wait", "--timeout", "60", "--json"],
                cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            probe = cli("runs", "--json", env=env)
            deadline = time.monotonic() + 20
            while not json.loads(probe.stdout or "[]") and time.monotonic() < deadline:
                time.sleep(0.2)
                probe = cli("runs", "--json", env=env)
            assert json.loads(probe.stdout), probe.stderr
            server.stop()  # down for longer than the command line's own quick retries
            time.sleep(3)
            server.start()
            out, errors = waiting.communicate(timeout=90)
    assert waiting.returncode == 0, out + errors
    assert json.loads(out)["status"] == "succeeded"
    assert "Traceback" not in errors
    assert errors.strip() == "lost Redis while waiting; trying again until the timeout"
