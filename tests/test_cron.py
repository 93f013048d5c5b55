"""Tick arithmetic of cluster schedules (pywork.cron), with fixed datetimes: nothing sleeps."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from pywork import Job
from pywork.cron import (
    MAX_CATCH_UP,
    Plan,
    ScheduleSpec,
    from_micros,
    tick_key,
    to_micros,
    validate_cron,
)

T0 = datetime(2026, 1, 15, 12, 0, 0, 123_456, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def every(seconds: float, misfire: str = "skip") -> ScheduleSpec:
    return ScheduleSpec.create(every=seconds, misfire=misfire)


def cron(expression: str, timezone: str = "UTC", misfire: str = "skip") -> ScheduleSpec:
    return ScheduleSpec.create(cron=expression, timezone=timezone, misfire=misfire)


def run(spec: ScheduleSpec, start: datetime, end: datetime, latency: float = 0.0) -> list[datetime]:
    """Every tick a ticker fires from `start` (declaration) to `end`, firing each
    `latency` seconds after it is due."""
    fired: list[datetime] = []
    next_run = spec.first_run(start)
    while next_run <= end:
        plan = spec.plan(next_run, next_run + s(latency))
        assert plan is not None
        fired.extend(plan.ticks)
        next_run = plan.next_run_at
    return fired


# ---------------------------------------------------------------------------------------
# every: a grid
# ---------------------------------------------------------------------------------------
def test_an_interval_schedule_first_runs_one_interval_after_its_declaration() -> None:
    assert every(10).first_run(T0) == T0 + s(10)
    assert every(0.25).first_run(T0) == T0 + s(0.25)
    assert ScheduleSpec.create(every=timedelta(minutes=5)).first_run(T0) == T0 + s(300)


def test_nothing_is_due_before_the_next_run() -> None:
    spec = every(10)
    assert spec.plan(T0 + s(10), T0 + s(9.999999)) is None
    assert spec.plan(T0 + s(10), T0 + s(10)) == Plan([T0 + s(10)], T0 + s(20))


def test_ticks_stay_on_the_grid_however_late_they_fire() -> None:
    # Given a schedule every 10 s fired 0 to 9.9 s late, tick after tick
    spec = every(10)
    rng = random.Random(7)
    next_run = spec.first_run(T0)
    fired = []
    for _ in range(500):
        plan = spec.plan(next_run, next_run + s(rng.uniform(0, 9.9)))
        assert plan is not None
        fired.extend(plan.ticks)
        next_run = plan.next_run_at
    # Then tick k is exactly T0 + 10*(k+1): latency never shifts the grid
    assert fired == [T0 + s(10 * (k + 1)) for k in range(500)]
    assert next_run == T0 + s(5010)


def test_a_late_fire_sets_the_next_run_to_the_first_tick_after_now() -> None:
    plan = every(10).plan(T0, T0 + s(10))  # exactly on the following tick: two are due
    assert plan == Plan([T0 + s(10)], T0 + s(20))
    plan = every(10).plan(T0, T0 + s(35))
    assert plan == Plan([T0 + s(30)], T0 + s(40))


@pytest.mark.parametrize(
    ("misfire", "late", "ticks"),
    [
        ("skip", 0.5, [0]),
        ("all", 0.5, [0]),
        ("skip", 3.5, [3]),  # ticks 0..3 due: the latest only
        ("all", 3.5, [0, 1, 2, 3]),
        ("all", 3.0, [0, 1, 2, 3]),
    ],
)
def test_misfire_policies(misfire: str, late: float, ticks: list[int]) -> None:
    plan = every(1, misfire).plan(T0, T0 + s(late))
    assert plan is not None
    assert plan.ticks == [T0 + s(k) for k in ticks]
    assert plan.next_run_at == T0 + s(ticks[-1] + 1)


def test_misfire_all_fires_the_latest_hundred_ticks_at_most() -> None:
    # Given a schedule every minute, down for 250 minutes
    plan = every(60, "all").plan(T0, T0 + s(250 * 60 + 30))
    assert plan is not None
    # Then the 100 latest of its 251 due ticks fire, oldest first, and the grid goes on
    assert MAX_CATCH_UP == 100
    assert len(plan.ticks) == 100
    assert plan.ticks == [T0 + s(60 * k) for k in range(151, 251)]
    assert plan.next_run_at == T0 + s(251 * 60)

    skip = every(60, "skip").plan(T0, T0 + s(250 * 60 + 30))
    assert skip == Plan([T0 + s(250 * 60)], T0 + s(251 * 60))


# ---------------------------------------------------------------------------------------
# cron
# ---------------------------------------------------------------------------------------
def test_cron_next_runs_in_utc() -> None:
    spec = cron("*/15 * * * *")
    assert spec.first_run(datetime(2026, 1, 15, 12, 7, 3, tzinfo=UTC)) == datetime(
        2026, 1, 15, 12, 15, tzinfo=UTC
    )
    # declared exactly on a tick: the first run is the next one (declaring never fires)
    assert spec.first_run(datetime(2026, 1, 15, 12, 15, tzinfo=UTC)) == datetime(
        2026, 1, 15, 12, 30, tzinfo=UTC
    )
    plan = spec.plan(
        datetime(2026, 1, 15, 12, 30, tzinfo=UTC), datetime(2026, 1, 15, 12, 30, 0, 5, tzinfo=UTC)
    )
    assert plan == Plan(
        [datetime(2026, 1, 15, 12, 30, tzinfo=UTC)], datetime(2026, 1, 15, 12, 45, tzinfo=UTC)
    )


def test_cron_reads_the_crontab_in_its_time_zone() -> None:
    # 09:00 in Tokyo (UTC+9, no DST) is 00:00 UTC
    spec = cron("0 9 * * *", "Asia/Tokyo")
    assert spec.first_run(datetime(2026, 7, 1, 1, 0, tzinfo=UTC)) == datetime(
        2026, 7, 2, 0, 0, tzinfo=UTC
    )
    # 09:00 in New York: 14:00 UTC in winter, 13:00 UTC in summer
    ny = cron("0 9 * * *", "America/New_York")
    assert ny.first_run(datetime(2026, 1, 15, tzinfo=UTC)) == datetime(2026, 1, 15, 14, tzinfo=UTC)
    assert ny.first_run(datetime(2026, 7, 15, tzinfo=UTC)) == datetime(2026, 7, 15, 13, tzinfo=UTC)


@pytest.mark.parametrize(("misfire", "fired"), [("skip", [20]), ("all", [5, 10, 15, 20])])
def test_cron_misfire(misfire: str, fired: list[int]) -> None:
    spec = cron("*/5 * * * *", misfire=misfire)
    plan = spec.plan(
        datetime(2026, 1, 15, 10, 5, tzinfo=UTC), datetime(2026, 1, 15, 10, 21, 40, tzinfo=UTC)
    )
    assert plan is not None
    assert plan.ticks == [datetime(2026, 1, 15, 10, m, tzinfo=UTC) for m in fired]
    assert plan.next_run_at == datetime(2026, 1, 15, 10, 25, tzinfo=UTC)


def test_cron_misfire_all_fires_the_latest_hundred_at_most() -> None:
    spec = cron("* * * * *", misfire="all")
    start = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
    plan = spec.plan(start, start + s(3 * 3600 + 5))
    assert plan is not None
    assert len(plan.ticks) == 100
    assert plan.ticks[-1] == start + s(3 * 3600)
    assert plan.ticks[0] == start + s(3 * 3600 - 99 * 60)
    assert all(b - a == s(60) for a, b in itertools.pairwise(plan.ticks))
    assert plan.next_run_at == start + s(3 * 3600 + 60)


def test_a_cron_next_run_off_the_crontab_still_fires_once() -> None:
    # e.g. stored by an older declaration: it fires, then the crontab takes over
    spec = cron("0 * * * *")
    odd = datetime(2026, 1, 15, 10, 17, tzinfo=UTC)
    plan = spec.plan(odd, odd + s(1))
    assert plan == Plan([odd], datetime(2026, 1, 15, 11, 0, tzinfo=UTC))


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


def test_fixed_time_cron_fires_once_on_the_night_clocks_go_forward() -> None:
    # Europe/Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist
    spec = cron("30 2 * * *", "Europe/Berlin")
    fired = run(spec, local(2026, 3, 27, 12, 0), local(2026, 3, 31, 12, 0), latency=0.2)
    days = [tick.astimezone(BERLIN).date().isoformat() for tick in fired]
    assert days == ["2026-03-28", "2026-03-29", "2026-03-30", "2026-03-31"]
    assert fired[0] == datetime(2026, 3, 28, 1, 30, tzinfo=UTC)  # 02:30 CET
    assert fired[2] == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)  # 02:30 CEST
    # the night of the change it fires once, at 03:00 CEST, right after the skipped hour
    # (as Vixie cron runs jobs whose time was skipped)
    assert fired[1] == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_fixed_time_cron_fires_once_on_the_night_clocks_go_back() -> None:
    # Europe/Berlin 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice
    spec = cron("30 2 * * *", "Europe/Berlin")
    fired = run(spec, local(2026, 10, 23, 12, 0), local(2026, 10, 27, 12, 0), latency=0.2)
    days = [tick.astimezone(BERLIN).date().isoformat() for tick in fired]
    assert days == ["2026-10-24", "2026-10-25", "2026-10-26", "2026-10-27"]
    assert fired[0] == datetime(2026, 10, 24, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert fired[1] == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # the first 02:30 (CEST)
    assert fired[2] == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)  # 02:30 CET
    # and the keys of those ticks are distinct UTC instants
    assert len({tick_key("backup", tick) for tick in fired}) == 4


@pytest.mark.parametrize(
    ("start", "end", "hours"),
    [
        ((2026, 3, 29, 0, 0), (2026, 3, 29, 5, 0), 4),  # the night is an hour short
        ((2026, 10, 25, 0, 0), (2026, 10, 25, 5, 0), 6),  # the night is an hour long
    ],
)
def test_half_hourly_cron_keeps_its_cadence_in_real_time_across_dst(
    start: tuple[int, ...], end: tuple[int, ...], hours: int
) -> None:
    spec = cron("*/30 * * * *", "Europe/Berlin")
    first, last = local(*start), local(*end)
    fired = run(spec, first - s(1), last)
    # Then ticks are 30 real minutes apart, none missing, none repeated
    assert last.astimezone(UTC) - first.astimezone(UTC) == s(hours * 3600)
    assert fired[0] == first.astimezone(UTC)
    assert fired[-1] == last.astimezone(UTC)
    assert all(b - a == s(1800) for a, b in itertools.pairwise(fired))
    assert len(fired) == 2 * hours + 1


def test_cron_misfire_all_across_the_repeated_hour_fires_each_real_tick_once() -> None:
    # All consumers were down from 01:45 to 03:45 local on the night clocks go back
    spec = cron("*/30 * * * *", "Europe/Berlin", misfire="all")
    down = datetime(2026, 10, 24, 23, 45, tzinfo=UTC)  # 01:45 CEST
    next_run = spec.first_run(down)
    plan = spec.plan(next_run, datetime(2026, 10, 25, 2, 45, tzinfo=UTC))  # 03:45 CET
    assert plan is not None
    assert plan.ticks[0] == datetime(2026, 10, 25, 0, 0, tzinfo=UTC)  # 02:00 CEST
    assert all(b - a == s(1800) for a, b in itertools.pairwise(plan.ticks))
    assert plan.ticks[-1] == datetime(2026, 10, 25, 2, 30, tzinfo=UTC)  # 03:30 CET
    assert len(plan.ticks) == 6


# ---------------------------------------------------------------------------------------
# validation, keys, jobs
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expression", "field"),
    [
        ("60 * * * *", "minute field '60'"),
        ("*/0 * * * *", "minute field"),
        ("* 25 * * *", "hour field '25'"),
        ("* * 0 * *", "day of month field '0'"),
        ("* * * 13 *", "month field '13'"),
        ("* * * foo *", "month field 'foo'"),
        ("* * * * 8", "day of week field '8'"),
    ],
)
def test_an_invalid_crontab_names_the_field(expression: str, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ScheduleSpec.create(cron=expression)


@pytest.mark.parametrize("expression", ["* * * *", "* * * * * *", "", "@daily"])
def test_a_crontab_has_exactly_five_fields(expression: str) -> None:
    with pytest.raises(ValueError, match="exactly 5 fields"):
        validate_cron(expression)


def test_validate_cron_normalises_spacing() -> None:
    assert validate_cron("  0   9 * *  1-5 ") == "0 9 * * 1-5"
    assert cron(" 0  9 * * mon-fri").cron == "0 9 * * mon-fri"


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({}, ValueError, r"exactly one of every= \(seconds\) or cron="),
        ({"every": 5, "cron": "* * * * *"}, ValueError, "exactly one of every"),
        ({"every": 0}, ValueError, "every must be > 0 seconds"),
        ({"every": timedelta(0)}, ValueError, "every must be > 0 seconds"),
        ({"every": float("nan")}, ValueError, "every must be a finite number"),
        ({"every": True}, TypeError, "every must be a number of seconds"),
        ({"cron": ["*"] * 5}, TypeError, "cron must be a 5-field crontab str"),
        ({"every": 1, "jitter": -0.1}, ValueError, "jitter must be >= 0 seconds"),
        ({"every": 1, "jitter": "1"}, TypeError, "jitter must be a number of seconds"),
        ({"every": 1, "timezone": "Europe/Atlantis"}, ValueError, "unknown timezone"),
        ({"every": 1, "timezone": None}, TypeError, "timezone must be an IANA name"),
        ({"every": 1, "misfire": "none"}, ValueError, "misfire must be 'skip' or 'all'"),
    ],
)
def test_create_validates_and_names_the_argument(
    options: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        ScheduleSpec.create(**options)  # type: ignore[arg-type]


def test_same_timing_compares_every_cron_and_timezone_only() -> None:
    base = ScheduleSpec.create(cron="0 9 * * *", timezone="Europe/Paris")
    assert base.same_timing(
        ScheduleSpec.create(cron="0  9 * * *", timezone="Europe/Paris", jitter=3, misfire="all")
    )
    assert not base.same_timing(ScheduleSpec.create(cron="0 9 * * *", timezone="UTC"))
    assert not base.same_timing(ScheduleSpec.create(cron="0 10 * * *", timezone="Europe/Paris"))
    assert every(5).same_timing(ScheduleSpec.create(every=timedelta(seconds=5)))
    assert not every(5).same_timing(every(6))


def test_micros_round_trip_exactly() -> None:
    for moment in (T0, datetime(1970, 1, 1, tzinfo=UTC), datetime(2262, 4, 11, 23, tzinfo=UTC)):
        assert from_micros(to_micros(moment)) == moment
    assert to_micros(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005
    assert to_micros(local(2026, 1, 1, 1, 0)) == to_micros(datetime(2026, 1, 1, tzinfo=UTC))
    assert from_micros(0).tzinfo is UTC


def test_tick_key_is_the_name_and_the_utc_tick() -> None:
    assert tick_key("report", T0) == "report@2026-01-15T12:00:00.123456+00:00"
    assert tick_key("r", local(2026, 7, 1, 9, 0)) == "r@2026-07-01T07:00:00+00:00"


def test_job_for_copies_the_job_with_the_tick_key_and_a_jitter_delay() -> None:
    declared = Job("h", {"a": [1]}, queue="q", key="ignored", headers={"x": "y"})
    job, delay = every(1).job_for("name", declared, T0)
    assert delay is None
    assert job.id != declared.id
    assert job.key == tick_key("name", T0)
    assert (job.handler, job.args, job.queue, job.headers) == ("h", {"a": [1]}, "q", {"x": "y"})
    job.args["a"].append(2)  # a shallow copy, as Job.copy()
    assert declared.key == "ignored"

    jittered = ScheduleSpec.create(every=1, jitter=2.5)
    delays = [jittered.job_for("n", declared, T0)[1] for _ in range(200)]
    assert all(d is not None and 0.0 <= d <= 2.5 for d in delays)
    assert len(set(delays)) > 100
