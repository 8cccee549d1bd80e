"""RabbitMQ as the broker, Redis for results and the journal: a private RabbitMQ node (never the
machine's own on 5672), real workers, and pipelines with chords (parallel sections with a model
aggregate, a vote) and a route's replace() — all through AMQP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from legato.client import Legato
from legato.compile import DEFAULT_QUEUES
from legato.local import processes
from legato.local.rabbitmq import RabbitServer, find_rabbitmq_server
from legato.settings import Settings, replace

pytestmark = pytest.mark.skipif(
    find_rabbitmq_server() is None,
    reason="rabbitmq-server is not installed on this machine (apt-get install rabbitmq-server)")


@pytest.fixture(scope="module")
def rabbit() -> Iterator[RabbitServer]:
    with RabbitServer() as server:
        yield server


@pytest.fixture(scope="module")
def amqp_legato(rabbit, stack_env, tmp_path_factory) -> Iterator[Legato]:
    env = {**stack_env, "LEGATO_BROKER_URL": rabbit.url}
    logs = tmp_path_factory.mktemp("amqp-workers")
    queues = [*DEFAULT_QUEUES, "legato.branch.billing", "legato.branch.technical"]
    with processes.worker("amqp", queues, env=env, concurrency=8, log_dir=logs) as worker:
        assert f"amqp://guest:**@127.0.0.1:{rabbit.port}//" in worker.log_path.read_text()
        yield Legato(replace(Settings.from_env(), broker_url=rabbit.url))


def test_chords_and_routes_run_through_rabbitmq(amqp_legato, fake):
    legato = amqp_legato
    assert legato.app.connection_for_write().transport.driver_type == "amqp"
    fake.script({"rules": [{"match": {"system_contains": "classify support tickets"},
                            "reply": {"branch": "billing"}}]})
    runs = {
        "stakeholders": legato.submit("stakeholders", {"change": "a four-day week"}),
        "sentiment_vote": legato.submit("sentiment_vote", {"review": "Loved it"}),
        "support_triage": legato.submit("support_triage", {"ticket": "I was charged twice"}),
    }
    for name, run_id in runs.items():
        record = legato.wait(run_id, timeout=60)
        assert record.status == "succeeded", (name, record.error)
        for step in legato.steps(run_id):
            assert step.worker.startswith("amqp@"), (name, step.path, step.worker)
    steps = {s.path: s for s in legato.steps(runs["stakeholders"])}
    assert steps["views"].detail["succeeded"] == 3  # the chord's fan-in saw all three sections
    assert {"views/customers", "views/employees", "views/investors"} <= set(steps)
    triage = {s.path: s for s in legato.steps(runs["support_triage"])}
    assert triage["triage/billing"].queue == "legato.branch.billing"
