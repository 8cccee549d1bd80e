"""Installed from a real (non-editable) wheel, Legato is `legato` and nothing else, and a user's
own `tasks.py`, `pipeline.py`, `workers.py` and `workers/` package in the working directory —
first on sys.path — shadow none of it: a worker (`legato worker` and plain
`celery -A legato.workers.app worker`), Flower, the CLI and the Python API all run from that
directory, and jobs complete.

The subprocesses see the wheel (installed with `pip --target`) first on PYTHONPATH and never the
repository root, so nothing here can be imported from the source folders by accident; the pipeline
used (`summarize`) needs only built-in tools.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from legato.local import processes
from legato.local.net import free_port
from legato.local.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
# The repository's folders and the import names they install as (pyproject [tool.setuptools]).
FOLDERS = {"pipeline": "legato", "tasks": "legato/tasks", "workers": "legato/workers"}
AUTH = ("ops", "s3cret")
TEXT = "A user's own tasks.py sits next to Legato's tasks; each keeps its own name and code."


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of what the Dockerfile copies (the worktree stays untouched)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, src / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(src),
                    "-w", str(tmp / "dist")], check=True, capture_output=True, timeout=180)
    (built,) = (tmp / "dist").glob("legato-*.whl")
    return built


@pytest.fixture(scope="module")
def site(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=120)
    return target


def test_the_wheel_installs_legato_and_nothing_else(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        top_level = whl.read(f"{dist_info}/top_level.txt").decode().split()
        entry_points = whl.read(f"{dist_info}/entry_points.txt").decode()
    assert top_level == ["legato"]
    assert {n.split("/")[0] for n in names} == {"legato", dist_info}
    assert "legato = legato.cli:main" in entry_points
    # Every module of the three folders is in the wheel, under its `legato` name.
    expected = {f"{FOLDERS[folder]}/{path.relative_to(ROOT / folder).as_posix()}"
                for folder in FOLDERS for path in (ROOT / folder).rglob("*.py")}
    assert expected - set(names) == set()
    assert "legato/py.typed" in names


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder: the Celery tutorial's tasks.py and modules named like Legato's folders.

    Each writes its name to `imported.log` when imported, so a Legato process that imported one
    of them by mistake leaves a trace.
    """
    home = tmp_path_factory.mktemp("project")
    log = home / "imported.log"
    mark = f"open({str(log)!r}, 'a').write(__name__ + '\\n')\n"
    (home / "tasks.py").write_text(mark + textwrap.dedent("""\
        from celery import Celery

        app = Celery('tasks')


        @app.task
        def add(x, y):
            return x + y
        """))
    (home / "pipeline.py").write_text(mark + "def run():\n    return 'my pipeline'\n")
    (home / "workers.py").write_text(mark + "COUNT = 3\n")
    (home / "workers").mkdir()
    (home / "workers" / "__init__.py").write_text(mark)
    (home / "workers" / "app.py").write_text(mark + "from celery import Celery\n\n"
                                             "app = Celery('my-workers')\n")
    return home


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A Redis of this module's own: no worker of another test can take these jobs."""
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="module")
def env(site: Path, redis_url: str, fake_model: str) -> dict[str, str]:
    """The environment of every process here: the wheel first on sys.path, the repository not at
    all (nothing from the outer test session's stack settings either)."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("LEGATO_", "PYTHON", "CELERY", "FLOWER"))}
    return {**base, "PYTHONPATH": str(site), "LEGATO_REDIS_URL": redis_url,
            "LEGATO_MODEL_BASE_URL": fake_model, "LEGATO_PIPELINES_DIR": str(ROOT / "pipelines"),
            "LEGATO_HTTP_TIMEOUT": "5", "COLUMNS": "200"}


def _run(code_or_argv: str | list[str], *, env: dict[str, str], cwd: Path
         ) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", code_or_argv] if isinstance(code_or_argv, str) else [
        sys.executable, *code_or_argv]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _here(service: processes.Service, env: dict[str, str], cwd: Path) -> processes.Service:
    # Exactly this environment (plus Flower's credentials, which it is given in its environment,
    # never on its command line), from the user's folder.
    auth = {k: service.env[k] for k in ("FLOWER_BASIC_AUTH",) if k in service.env}
    service.env, service.cwd = {**env, **auth}, cwd
    return service


def test_the_wheel_is_what_runs(site: Path, env: dict[str, str], project: Path) -> None:
    probe = _run("import json, sys, legato, legato.tasks, legato.workers.app, legato.cli\n"
                 "print(json.dumps({'path': sys.path, 'files': [legato.__file__,"
                 " legato.tasks.__file__, legato.workers.app.__file__]}))", env=env, cwd=project)
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    for path in seen["files"]:
        assert Path(path).is_relative_to(site), path
    # The user's folder comes first (the shadowing case); the repository is nowhere.
    assert seen["path"][:2] == ["", str(site)]
    assert not [p for p in seen["path"] if p and Path(p).resolve() == ROOT]


@pytest.fixture(scope="module")
def stack(env: dict[str, str], project: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[str]:
    """From the user's folder: `legato worker` on control and tools, plain
    `celery -A legato.workers.app worker` on the model queue, and `legato flower`; yields
    Flower's URL."""
    logs = tmp_path_factory.mktemp("namespace-logs")
    port = free_port()
    with ExitStack() as running:
        for service in (
            processes.worker("wheelcli", ["legato.control", "legato.tools"], env=env,
                             concurrency=4, log_dir=logs),
            processes.worker("wheelcelery", ["legato.llm"], env=env, concurrency=4,
                             plain_celery=True, log_dir=logs),
            processes.flower(port, env=env, basic_auth=":".join(AUTH), log_dir=logs),
        ):
            running.enter_context(_here(service, env, project))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/healthcheck", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Flower did not answer its healthcheck"
            time.sleep(0.2)
        yield url


def _workers_of(run_id: str, env: dict[str, str], project: Path) -> dict[str, str]:
    """Which worker ran each step of the run (by the Python API, from the user's folder)."""
    steps = _run(["-c", "import json, sys\nfrom legato import Legato\n"
                  "print(json.dumps({s.path: s.worker for s in Legato().steps(sys.argv[1])}))",
                  run_id], env=env, cwd=project)
    assert steps.returncode == 0, steps.stderr
    return json.loads(steps.stdout)


def test_jobs_complete_from_a_folder_that_shadows_every_folder_name(
        stack: str, env: dict[str, str], project: Path, fake) -> None:
    # The CLI.
    cli = _run(["-m", "legato.cli", "submit", "summarize", "--input", json.dumps({"text": TEXT}),
                "--wait", "--json"], env=env, cwd=project)
    assert cli.returncode == 0, cli.stderr
    by_cli = json.loads(cli.stdout)
    assert by_cli["status"] == "succeeded" and by_cli["pipeline"] == "summarize"

    # The Python API.
    api = _run(textwrap.dedent("""\
        import json
        from legato import Legato

        legato = Legato()
        run = legato.wait(legato.submit("summarize", {"text": %r}), timeout=30)
        print(json.dumps({"id": run.id, "status": run.status, "error": run.error}))
        """) % TEXT, env=env, cwd=project)
    assert api.returncode == 0, api.stderr
    by_api = json.loads(api.stdout)
    assert by_api["status"] == "succeeded", by_api["error"]

    # Each worker did its queue's part: the model calls on the plain Celery worker.
    for run_id in (by_cli["id"], by_api["id"]):
        workers = _workers_of(run_id, env, project)
        assert {path: name.split("@")[0] for path, name in workers.items()} == {
            "summary": "wheelcelery", "length": "wheelcli", "headline": "wheelcelery"}

    # Flower, started the same way, serves its page and saw the tasks under Legato's names.
    page = httpx.get(stack, auth=AUTH, timeout=10)
    assert page.status_code == 200 and "Flower" in page.text
    deadline = time.monotonic() + 20
    seen: set[str] = set()
    while time.monotonic() < deadline and not {"legato.llm", "legato.tool"} <= seen:
        tasks = httpx.get(f"{stack}/api/tasks", auth=AUTH, timeout=5).json().values()
        seen = {t["name"] for t in tasks if by_api["id"] in (t.get("kwargs") or "")}
        time.sleep(0.3)
    assert {"legato.llm", "legato.tool"} <= seen

    # No Legato process imported any of the user's modules ...
    log = project / "imported.log"
    assert not log.exists(), log.read_text()
    # ... which are importable side by side with Legato, each under its own name.
    both = _run("import legato.tasks.steps, legato.workers.app, tasks, pipeline, workers\n"
                "import workers.app\n"
                "assert tasks.add.name == 'tasks.add' and tasks.add.run(2, 3) == 5\n"
                "assert pipeline.run() == 'my pipeline' and workers.app.app.main == 'my-workers'\n"
                "assert legato.workers.app.app.main == 'legato'\n", env=env, cwd=project)
    assert both.returncode == 0, both.stderr
    assert log.read_text().split() == ["tasks", "pipeline", "workers", "workers.app"]
