"""mypy sees the installed `legato` as real modules.

An editable install made through an import hook (setuptools' default editable mode for a
package-dir mapping like ours) is invisible to mypy; with `ignore_missing_imports` it then types
every `legato.*` name as `Any` and still says "Success". The strict editable install (a link
tree, see the Makefile) must keep the real types, across all three folders.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SNIPPET = """\
from legato import Legato
from legato.settings import get_settings
from legato.tasks.base import journaled
from legato.workers.app import create_app

reveal_type(get_settings())
reveal_type(journaled)
reveal_type(create_app)
reveal_type(Legato().submit)
"""


def test_mypy_sees_real_types_in_legato_tasks_and_workers(tmp_path: Path) -> None:
    (tmp_path / "snippet.py").write_text(SNIPPET)
    # The project's own settings (ignore_missing_imports among them), from outside the repo.
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "cache"), "snippet.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    revealed = re.findall(r'Revealed type is "(.*)"', done.stdout)
    assert len(revealed) == 4, done.stdout
    settings, journaled, create_app, submit = revealed
    assert settings == "legato.settings.Settings"
    assert journaled.startswith("def (task: Any, step: legato.envelope.StepInput, kind: str, "
                                "work: def (")
    assert journaled.endswith(") -> legato.envelope.StepResult")
    assert "legato.context.StepContext" in journaled
    # Celery itself is untyped (Any); the parameter is Legato's own type.
    assert create_app.startswith("def (settings: legato.settings.Settings | None =)")
    assert submit == ("def (pipeline: str | legato.spec.Pipeline, input: Any, *, "
                      "idempotency_key: str | None =, names_only: bool =, on_done: "
                      "legato.envelope.OnDone | typing.Mapping[str, Any] | None =, schedule: "
                      "str | None =, tenant: str | None =, priority: int | None =, "
                      "tags: typing.Mapping[str, str] | None =, watch: bool =) -> str")
