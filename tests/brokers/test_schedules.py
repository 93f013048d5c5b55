"""Cluster schedules (contract §9), run against each backend of conftest.BACKENDS.

Tick arithmetic is driven with a fake clock (``pywork.cron.now`` patched) and
``ticker.fire_due``, so nothing sleeps; one test lets a real consumer fire a schedule.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pywork import Job, JobState, SerializationError, Worker
from pywork import cron as cronlib
from pywork.brokers import Broker
from pywork.brokers.base import ScheduleRecord, ScheduleStore
from pywork.cron import tick_key
from pywork.ticker import fire_due
from tests.brokers.support import consuming, until

OpenBroker = Callable[..., Awaitable[Broker]]
LOG = logging.getLogger("test.schedules")
T0 = datetime(2026, 5, 4, 10, 0, 0, 250_000, tzinfo=UTC)


class Clock:
    """A fake ``pywork.cron.now``: aware UTC, moved by hand."""

    def __init__(self, start: datetime) -> None:
        self.at = start

    def __call__(self) -> datetime:
        return self.at

    def set(self, at: datetime) -> None:
        self.at = at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(T0)
    monkeypatch.setattr(cronlib, "now", fake)
    return fake


def store(broker: Broker) -> ScheduleStore:
    assert callable(getattr(broker, "due_schedules", None)), f"{broker!r} has no schedules"
    return broker


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


async def claim_all(broker: Broker, queue: str = "default") -> list[Job]:
    """Claim every ready job of `queue` (oldest first) and return the decoded jobs."""
    deliveries = await broker.claim([queue], 1000, lease=30.0, max_retries=3)
    jobs = [d.job for d in deliveries]
    assert all(job is not None for job in jobs)
    return [job for job in jobs if job is not None]


async def count(broker: Broker, queue: str = "default") -> int:
    """Jobs of `queue` in any state."""
    stats = (await broker.stats()).get(queue)
    if stats is None:
        return 0
    return sum(getattr(stats, state.value) for state in JobState)


# ---------------------------------------------------------------------------------------
# declaring
# ---------------------------------------------------------------------------------------
async def test_declare_list_redeclare_and_unschedule(broker: Broker, clock: Clock) -> None:
    schedules = store(broker)
    # Given a schedule declared with every=60
    job = Job("report", {"kind": "daily", "n": [1, 2]}, queue="reports", headers={"h": "v"})
    record = await schedules.schedule("report", job, every=60)

    # Then its record shows the job, the timing and the first run one interval later
    assert isinstance(record, ScheduleRecord)
    assert record.name == "report"
    assert (record.job.handler, record.job.args, record.job.queue, record.job.headers) == (
        "report",
        {"kind": "daily", "n": [1, 2]},
        "reports",
        {"h": "v"},
    )
    assert (record.every, record.cron, record.timezone) == (60.0, None, "UTC")
    assert (record.jitter, record.misfire) == (0.0, "skip")
    assert record.next_run_at == T0 + s(60)
    assert record.next_run_at.tzinfo is not None
    assert record.last_run_at is None

    # And a cron schedule in a time zone is listed too, by name
    await schedules.schedule(
        "backup", Job("backup"), cron="30 2 * * *", timezone="Europe/Berlin", jitter=5
    )
    listed = await schedules.schedules()
    assert [r.name for r in listed] == ["backup", "report"]
    backup = listed[0]
    assert (backup.every, backup.cron, backup.timezone, backup.jitter) == (
        None,
        "30 2 * * *",
        "Europe/Berlin",
        5.0,
    )
    assert backup.next_run_at == datetime(2026, 5, 5, 0, 30, tzinfo=UTC)  # 02:30 CEST

    # When it is redeclared later with the same interval and new args
    clock.advance(45)
    again = await schedules.schedule("report", Job("report", {"kind": "weekly"}), every=60.0)
    # Then it keeps its next run time, and the job is the new one
    assert again.next_run_at == T0 + s(60)
    assert again.job.args == {"kind": "weekly"}
    assert again.job.queue == "default"

    # When it is redeclared with another interval, the next run is computed afresh
    other = await schedules.schedule("report", job, every=10)
    assert other.next_run_at == T0 + s(55)
    assert (await schedules.schedules())[1].next_run_at == T0 + s(55)

    # And unschedule removes it once
    assert await schedules.unschedule("report") is True
    assert await schedules.unschedule("report") is False
    assert [r.name for r in await schedules.schedules()] == ["backup"]


async def test_declaring_never_fires(broker: Broker, clock: Clock) -> None:
    schedules = store(broker)
    await schedules.schedule("a", Job("a"), every=1)
    await schedules.schedule("b", Job("b"), cron="* * * * *")
    await schedules.schedule("a", Job("a"), every=1)  # redeclared: still nothing

    # Nothing is due just before the first tick, and nothing was enqueued
    clock.advance(0.999)
    await fire_due(schedules, LOG)
    assert await count(broker) == 0
    due, earliest = await schedules.due_schedules(clock())
    assert due == []
    assert earliest == T0 + s(1)


async def test_redeclaring_with_a_new_interval_does_not_fire_an_extra_run(
    broker: Broker, clock: Clock
) -> None:
    schedules = store(broker)
    # Given a schedule every 10 s that fired its first tick
    await schedules.schedule("sync", Job("sync"), every=10)
    clock.set(T0 + s(10))
    await fire_due(schedules, LOG)
    assert await count(broker) == 1

    # When it is redeclared every 5 s two seconds later
    clock.set(T0 + s(12))
    record = await schedules.schedule("sync", Job("sync"), every=5)

    # Then nothing fires now, and the next run is one new interval after the redeclaration
    assert record.next_run_at == T0 + s(17)
    assert record.last_run_at == T0 + s(10)
    await fire_due(schedules, LOG)
    clock.set(T0 + s(16.9))
    await fire_due(schedules, LOG)
    assert await count(broker) == 1
    clock.set(T0 + s(17))
    await fire_due(schedules, LOG)
    assert await count(broker) == 2


async def test_schedule_refuses_args_it_cannot_encode(broker: Broker, clock: Clock) -> None:
    schedules = store(broker)
    with pytest.raises(SerializationError, match=r"args\['when'\]"):
        await schedules.schedule("x", Job("x", {"when": datetime.now()}), every=1)
    with pytest.raises(SerializationError, match=r"headers"):
        job = Job("x")
        job.headers["trace"] = b"raw"  # type: ignore[assignment]
        await schedules.schedule("x", job, every=1)
    assert await schedules.schedules() == []


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({}, ValueError, "exactly one of every"),
        ({"every": 1, "cron": "* * * * *"}, ValueError, "exactly one of every"),
        ({"every": 0}, ValueError, "every must be > 0"),
        ({"every": -1.5}, ValueError, "every must be > 0"),
        ({"every": "5"}, TypeError, "every must be a number"),
        ({"cron": "61 * * * *"}, ValueError, "minute field '61'"),
        ({"cron": "0 24 * * *"}, ValueError, "hour field '24'"),
        ({"cron": "0 0 32 * *"}, ValueError, "day of month field '32'"),
        ({"cron": "0 0 * 13 *"}, ValueError, "month field '13'"),
        ({"cron": "0 0 * * 9"}, ValueError, "day of week field '9'"),
        ({"cron": "0 0 * *"}, ValueError, "exactly 5 fields"),
        ({"cron": 5}, TypeError, "cron must be a 5-field crontab"),
        ({"every": 1, "jitter": -1}, ValueError, "jitter must be >= 0"),
        ({"every": 1, "timezone": "Mars/Olympus"}, ValueError, "unknown timezone 'Mars/Olympus'"),
        ({"every": 1, "timezone": ""}, TypeError, "timezone must be an IANA name"),
        ({"every": 1, "misfire": "later"}, ValueError, "misfire must be 'skip' or 'all'"),
    ],
)
async def test_schedule_validates_its_arguments(
    broker: Broker, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await store(broker).schedule("x", Job("x"), **options)
    assert await store(broker).schedules() == []


async def test_schedule_validates_name_and_job(broker: Broker) -> None:
    schedules = store(broker)
    with pytest.raises(ValueError, match="schedule name must be a non-empty str"):
        await schedules.schedule("", Job("x"), every=1)
    with pytest.raises(TypeError, match="schedule name must be a str"):
        await schedules.schedule(7, Job("x"), every=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"job must be a pywork\.Job"):
        await schedules.schedule("x", "x", every=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="schedule name must be a str"):
        await schedules.unschedule(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# firing
# ---------------------------------------------------------------------------------------
async def test_fired_job_is_a_copy_with_the_tick_key(broker: Broker, clock: Clock) -> None:
    schedules = store(broker)
    declared = Job(
        "bill",
        {"plan": "pro", "amounts": [1.5, 2]},
        queue="billing",
        timeout=30,
        max_retries=7,
        headers={"tenant": "acme"},
    )
    await schedules.schedule("billing", declared, every=timedelta(minutes=1))

    # When the first tick is due and fired
    clock.set(T0 + s(60.3))
    await fire_due(schedules, LOG)

    # Then one job is queued: the declared job with a new id and the tick key
    (job,) = await claim_all(broker, "billing")
    tick = T0 + s(60)
    assert job.key == f"billing@{tick.isoformat()}" == "billing@2026-05-04T10:01:00.250000+00:00"
    assert job.id != declared.id
    assert (job.handler, job.args, job.queue, job.timeout, job.max_retries, job.headers) == (
        "bill",
        {"plan": "pro", "amounts": [1.5, 2]},
        "billing",
        30.0,
        7,
        {"tenant": "acme"},
    )
    # And the schedule moved on to the next tick on the grid
    (record,) = await schedules.schedules()
    assert (record.last_run_at, record.next_run_at) == (tick, T0 + s(120))


async def test_cron_ticks_fire_at_their_crontab_times(broker: Broker, clock: Clock) -> None:
    schedules = store(broker)
    clock.set(datetime(2026, 5, 4, 10, 1, 30, tzinfo=UTC))
    record = await schedules.schedule("five", Job("five"), cron="*/5 * * * *")
    assert record.next_run_at == datetime(2026, 5, 4, 10, 5, tzinfo=UTC)

    clock.set(datetime(2026, 5, 4, 10, 5, 0, 400_000, tzinfo=UTC))
    await fire_due(schedules, LOG)
    (job,) = await claim_all(broker)
    assert job.key == "five@2026-05-04T10:05:00+00:00"
    (record,) = await schedules.schedules()
    assert record.next_run_at == datetime(2026, 5, 4, 10, 10, tzinfo=UTC)


async def test_fire_is_a_compare_and_set(
    broker: Broker, open_broker: OpenBroker, clock: Clock
) -> None:
    # Given a due schedule and two connections to the same store
    first = store(broker)
    second = store(await open_broker())
    await first.schedule("cas", Job("cas"), every=1)
    clock.set(T0 + s(1))
    (record,) = (await second.due_schedules(clock()))[0]
    tick = record.next_run_at

    def jobs() -> list[tuple[Job, float | None]]:
        return [record.spec.job_for("cas", record.job, tick)]

    # When both fire the same tick at once with the same expected next run
    won = await asyncio.gather(
        first.fire("cas", tick, tick + s(1), tick, jobs()),
        second.fire("cas", tick, tick + s(1), tick, jobs()),
    )

    # Then exactly one wins and one job is enqueued
    assert sorted(won) == [False, True]
    assert [job.key for job in await claim_all(broker)] == [tick_key("cas", tick)]
    # And a stale expected, or a removed schedule, changes nothing
    assert await first.fire("cas", tick, tick + s(5), tick, jobs()) is False
    assert (await first.schedules())[0].next_run_at == tick + s(1)
    assert await first.unschedule("cas")
    assert await first.fire("cas", tick + s(1), tick + s(2), tick + s(1), jobs()) is False
    assert await count(broker) == 1


async def test_concurrent_tickers_fire_each_tick_once(
    broker: Broker, open_broker: OpenBroker, clock: Clock
) -> None:
    tickers = [store(broker), *[store(await open_broker()) for _ in range(3)]]
    await tickers[0].schedule("once", Job("once"), every=1, misfire="all")
    for step in range(1, 6):
        clock.set(T0 + s(step))
        await asyncio.gather(*(fire_due(t, LOG) for t in tickers))
    keys = [job.key for job in await claim_all(broker)]
    assert keys == [tick_key("once", T0 + s(step)) for step in range(1, 6)]


async def test_a_tick_whose_key_is_held_by_a_live_job_is_not_enqueued_twice(
    broker: Broker, clock: Clock
) -> None:
    schedules = store(broker)
    await schedules.schedule("k", Job("k"), every=1)
    held = await broker.enqueue(Job("k", key=tick_key("k", T0 + s(1))))
    clock.set(T0 + s(1))
    await fire_due(schedules, LOG)
    # The schedule moved on, but the queue still holds only the first job of that key
    assert (await schedules.schedules())[0].last_run_at == T0 + s(1)
    assert [job.id for job in await claim_all(broker)] == [held]


async def test_due_schedules_and_the_earliest_of_the_others(broker: Broker, clock: Clock) -> None:
    schedules = store(broker)
    await schedules.schedule("a", Job("a"), every=1)
    await schedules.schedule("b", Job("b"), every=2)
    await schedules.schedule("c", Job("c"), every=30)

    due, earliest = await schedules.due_schedules(T0)
    assert (due, earliest) == ([], T0 + s(1))
    due, earliest = await schedules.due_schedules(T0 + s(2))
    assert [r.name for r in due] == ["a", "b"]
    assert earliest == T0 + s(30)
    due, earliest = await schedules.due_schedules(T0 + s(60))
    assert [r.name for r in due] == ["a", "b", "c"]
    assert earliest is None
    assert all(r.next_run_at.tzinfo is not None for r in due)


@pytest.mark.parametrize(("misfire", "fired"), [("skip", [4]), ("all", [2, 3, 4])])
async def test_misfire_after_consumers_were_stopped_for_three_ticks(
    broker: Broker, clock: Clock, misfire: str, fired: list[int]
) -> None:
    schedules = store(broker)
    # Given a schedule every second whose first tick fired on time
    await schedules.schedule("beat", Job("beat"), every=1, misfire=misfire)
    clock.set(T0 + s(1.01))
    await fire_due(schedules, LOG)
    assert [job.key for job in await claim_all(broker)] == [tick_key("beat", T0 + s(1))]

    # When no consumer runs for three ticks (2, 3 and 4)
    clock.set(T0 + s(4.5))
    await fire_due(schedules, LOG)

    # Then skip fires the latest tick only, all fires the three
    keys = [job.key for job in await claim_all(broker)]
    assert keys == [tick_key("beat", T0 + s(n)) for n in fired]
    # And the grid is kept: the next run is tick 5, the last run tick 4
    (record,) = await schedules.schedules()
    assert (record.last_run_at, record.next_run_at) == (T0 + s(4), T0 + s(5))


async def test_jitter_delays_the_job_but_keeps_the_tick_key(broker: Broker, clock: Clock) -> None:
    schedules = store(broker)
    await schedules.schedule("j", Job("j"), every=1, jitter=30, misfire="all")
    clock.set(T0 + s(3.5))
    before = time.time()
    await fire_due(schedules, LOG)
    after = time.time()

    stats = (await broker.stats())["default"]
    assert stats.scheduled + stats.queued == 3
    assert stats.scheduled >= 2  # a random delay of under a few ms is all but impossible
    for n in (1, 2, 3):
        # enqueueing a job whose key is live returns the id of the job holding it
        job_id = await broker.enqueue(Job("probe", key=tick_key("j", T0 + s(n))))
        record = await broker.get(job_id)
        assert record is not None and record.handler == "j"
        if record.state == JobState.SCHEDULED:
            assert record.run_at is not None
            assert before <= record.run_at.timestamp() <= after + 30
        else:
            assert record.state == JobState.QUEUED


# ---------------------------------------------------------------------------------------
# a real consumer
# ---------------------------------------------------------------------------------------
async def test_a_consumer_fires_a_declared_schedule(broker: Broker) -> None:
    # Given a worker that declares a schedule every 0.2 s on another queue
    worker = Worker()
    ran: list[tuple[str, float]] = []

    @worker.handler("tick")
    async def tick(job: Job) -> None:
        assert job.key is not None
        ran.append((job.key, time.time()))

    worker.schedule("fast", Job("tick", {"n": 1}, queue="ticks"), every=0.2)

    # When it consumes that queue for a while
    async with consuming(worker, broker, queues=["ticks"]):
        await until(_ran(ran, 3), 10.0, "three ticks run")

    # Then the schedule is stored in the broker, and ticks ran once each, on the grid
    (record,) = await store(broker).schedules()
    assert (record.name, record.every, record.job.args) == ("fast", 0.2, {"n": 1})
    keys = [key for key, _ in ran]
    assert len(set(keys)) == len(keys)
    ticks = [datetime.fromisoformat(key.split("@", 1)[1]) for key in keys]
    assert all(
        round((b - a).total_seconds() / 0.2, 6).is_integer() for a, b in itertools.pairwise(ticks)
    )
    for tick_at, (_, started) in zip(ticks, ran, strict=True):
        assert started - tick_at.timestamp() < 5.0  # generous: it fired near its tick


def _ran(ran: list[Any], n: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return len(ran) >= n

    return check


async def test_consume_redeclares_idempotently(broker: Broker, clock: Clock) -> None:
    # Given a schedule already stored by another process
    schedules = store(broker)
    first = await schedules.schedule("nightly", Job("n"), cron="0 3 * * *")
    # When a worker that declares it too starts consuming (later)
    clock.advance(3600)
    worker = Worker()
    worker.schedule("nightly", Job("n", {"v": 2}), cron="0 3 * * *")
    async with consuming(worker, broker):
        await until(_declared(schedules, {"v": 2}), 10.0, "declaration applied")
    # Then the next run is kept and the job is the worker's
    (record,) = await schedules.schedules()
    assert record.next_run_at == first.next_run_at


def _declared(schedules: ScheduleStore, args: dict[str, Any]):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        records = await schedules.schedules()
        return bool(records) and records[0].job.args == args

    return check


def test_worker_schedule_validates_at_once() -> None:
    worker = Worker()
    with pytest.raises(TypeError, match="schedule name must be a str"):
        worker.schedule(b"x", Job("x"), every=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schedule name must be a non-empty str"):
        worker.schedule("", Job("x"), every=1)
    with pytest.raises(TypeError, match=r"job must be a pywork\.Job"):
        worker.schedule("x", {"handler": "x"}, every=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly one of every"):
        worker.schedule("x", Job("x"))
    with pytest.raises(ValueError, match="minute field '99'"):
        worker.schedule("x", Job("x"), cron="99 * * * *")
    with pytest.raises(ValueError, match="unknown timezone"):
        worker.schedule("x", Job("x"), every=1, timezone="Nowhere/Land")
    with pytest.raises(SerializationError, match=r"args\['s'\]"):
        worker.schedule("x", Job("x", {"s": {1, 2}}), every=1)
    assert worker._cluster_schedules == {}

    # A valid declaration is recorded; declaring the name again replaces it
    worker.schedule("x", Job("x"), every=1)
    worker.schedule("x", Job("y"), cron="0 * * * *", timezone="Asia/Tokyo", misfire="all")
    (job, spec) = worker._cluster_schedules["x"]
    assert job.handler == "y"
    assert (spec.every, spec.cron, spec.timezone, spec.misfire) == (
        None,
        "0 * * * *",
        "Asia/Tokyo",
        "all",
    )
