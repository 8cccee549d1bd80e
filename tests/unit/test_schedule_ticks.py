"""schedules.yaml without a broker: ticks (absolute, the same in every process) and the file's
checks, each naming the file and the path."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from legato.client import Legato
from legato.errors import SpecError
from legato.schedules import Cron, Every, load_for, tick_stamp
from legato.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_every_ticks_at_multiples_of_its_period_since_the_epoch():
    clock = Every(30)
    assert clock.latest(at("2026-12-01 12:00:29.9")) == at("2026-12-01 12:00:00")
    assert clock.latest(at("2026-12-01 12:00:30")) == at("2026-12-01 12:00:30")
    assert clock.following(at("2026-12-01 12:00:30")) == at("2026-12-01 12:01:00")
    # Two processes a moment apart agree on the tick: that is what dedupes two beats.
    assert tick_stamp(clock.latest(at("2026-12-01 12:00:31.001"))) == \
        tick_stamp(clock.latest(at("2026-12-01 12:00:59.999"))) == "2026-12-01T12:00:30Z"


@pytest.mark.parametrize(("expression", "now", "latest", "following"), [
    ("0 3 * * *", "2026-12-01 12:00", "2026-12-01 03:00", "2026-12-02 03:00"),
    ("*/15 * * * *", "2026-12-01 12:44:59", "2026-12-01 12:30", "2026-12-01 12:45"),
    ("0 9 * * mon-fri", "2026-12-06 10:00", "2026-12-04 09:00", "2026-12-07 09:00"),  # Sun
    ("30 6 1 jan *", "2026-12-01 00:00", "2026-01-01 06:30", "2027-01-01 06:30"),
    ("0 0 29 2 *", "2026-12-01 00:00", "2024-02-29 00:00", "2028-02-29 00:00"),
])
def test_cron_finds_the_last_and_next_matching_minute(expression, now, latest, following):
    clock = Cron.parse(expression)
    assert clock.latest(at(now)) == at(latest)
    assert clock.following(at(now)) == at(following)
    assert clock.matches(at(latest)) and clock.matches(at(following))


def _settings(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "schedules.yaml"
    path.write_text(text)
    return Settings(pipelines_dir=ROOT / "pipelines", schedules_file=str(path),
                    webhook_hosts=("https://hooks.example.com",))


def test_a_good_file_loads_every_schedule(tmp_path):
    settings = _settings(tmp_path, """
schedules:
  nightly: {pipeline: summarize, cron: "0 3 * * *", input: {text: hi}}
  often:
    pipeline: summarize
    every: 5m
    input: {text: hi}
    overlap: allow
    on_done: {url: "https://hooks.example.com/legato", task: ops.notify}
""")
    found = {s.name: s for s in load_for(Legato(settings))}
    assert str(found["nightly"].clock) == "cron 0 3 * * *" and found["nightly"].overlap == "skip"
    assert found["often"].every == 300 and found["often"].overlap == "allow"
    assert found["often"].on_done is not None and found["often"].on_done.task == "ops.notify"


@pytest.mark.parametrize(("body", "path", "reason"), [
    ('nightly: {pipeline: summarize, cron: "61 * * * *", input: {text: hi}}',
     "schedules.nightly.cron", "not a cron expression"),
    ('nightly: {pipeline: summarize, cron: "0 3 * *", input: {text: hi}}',
     "schedules.nightly.cron", "not five fields"),
    ('nightly: {pipeline: no_such_pipeline, every: 60, input: {}}',
     "schedules.nightly.pipeline", "unknown pipeline"),
    ('nightly: {pipeline: ../etc/passwd, every: 60, input: {}}',
     "schedules.nightly.pipeline", "not a path"),
    ('nightly: {pipeline: summarize, every: 60, input: {text: 42}}',
     "schedules.nightly.input", "input for pipeline 'summarize' refused"),
    ('nightly: {pipeline: summarize, every: 60, cron: "* * * * *", input: {text: hi}}',
     "schedules.nightly", "exactly one of `cron` and `every`"),
    ('nightly: {pipeline: summarize, input: {text: hi}}',
     "schedules.nightly", "exactly one of `cron` and `every`"),
    ('nightly: {pipeline: summarize, every: 0.5, input: {text: hi}}',
     "schedules.nightly.every", "a whole number of seconds, at least 1"),
    ('nightly: {pipeline: summarize, every: soon, input: {text: hi}}',
     "schedules.nightly.every", "not seconds"),
    ('nightly: {pipeline: summarize, every: 60, input: {text: hi}, overlap: queue}',
     "schedules.nightly.overlap", "'skip' or 'allow'"),
    ('nightly: {pipeline: summarize, every: 60, input: {text: hi}, when: now}',
     "schedules.nightly.when", "unknown field"),
    ('nightly: {pipeline: summarize, every: 60, input: {text: hi}, '
     'on_done: {url: "https://evil.example.net/x"}}',
     "schedules.nightly", "not in LEGATO_WEBHOOK_HOSTS"),
    ('"bad name!": {pipeline: summarize, every: 60, input: {text: hi}}',
     "schedules.bad name!", "letters, digits"),
])
def test_a_bad_schedule_names_the_file_and_the_path(tmp_path, body, path, reason):
    settings = _settings(tmp_path, f"schedules:\n  {body}\n")
    with pytest.raises(SpecError) as info:
        load_for(Legato(settings))
    assert info.value.source == settings.schedules_file
    assert info.value.path == path and reason in info.value.reason, info.value


def test_a_file_that_is_not_schedules_is_refused(tmp_path):
    for text in ("[1, 2]", "schedules: [a]", "schedules: {}\nextra: 1"):
        with pytest.raises(SpecError) as info:
            load_for(Legato(_settings(tmp_path, text)))
        assert info.value.source.endswith("schedules.yaml")
    missing = Settings(pipelines_dir=ROOT / "pipelines", schedules_file=str(tmp_path / "no.yaml"))
    with pytest.raises(SpecError, match="no schedules file here"):
        load_for(Legato(missing))


def test_the_schedules_file_is_not_a_pipeline():
    from legato.loader import available_pipelines, find_pipeline

    assert "schedules" not in available_pipelines(ROOT / "pipelines")
    with pytest.raises(SpecError, match="unknown pipeline"):
        find_pipeline("schedules", ROOT / "pipelines", names_only=True)


def test_the_schedules_file_is_beside_the_pipelines_unless_set():
    assert Settings(pipelines_dir=Path("/srv/p")).schedules_path == Path("/srv/p/schedules.yaml")
    assert Settings(schedules_file="/etc/s.yaml").schedules_path == Path("/etc/s.yaml")


def test_beat_sees_a_tick_due_once_even_when_it_fires_late():
    from legato.schedules import Schedule
    from legato.workers.beat import Clock

    now = [at("2026-12-01 12:00:00.500")]
    clock = Clock(Schedule(name="s", pipeline="p", every=1), app=None)
    clock.nowfun = lambda: now[0]
    started = at("2026-12-01 12:00:00.400")
    assert not clock.is_due(started).is_due  # the tick beat started in is not fired
    now[0] = at("2026-12-01 12:00:01.002")
    due, wait = clock.is_due(started)
    assert due and 0.9 < wait <= 1.0
    # Beat found it due at :01, was held up and fired :02 (the tick at firing time).
    clock.fired = at("2026-12-01 12:00:02")
    now[0] = at("2026-12-01 12:00:02.010")
    assert not clock.is_due(at("2026-12-01 12:00:01.002")).is_due  # :02 is not fired again
    now[0] = at("2026-12-01 12:00:03.001")
    assert clock.is_due(at("2026-12-01 12:00:02.010")).is_due
