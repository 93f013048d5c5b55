"""PostgresBroker cluster schedules, on a real PostgreSQL: the schedules table, the
compare-and-set of fire under concurrency, redeclaring, persistence (contract §9).

The behaviour every broker shares is in test_schedules.py / test_schedules_cluster.py;
these tests cover what only the PostgreSQL backend does.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

import pywork
from pywork import Job, JobState
from pywork.brokers import postgres as pg
from pywork.brokers.base import ScheduleRecord, ScheduleStore
from pywork.brokers.postgres import PostgresBroker
from pywork.cron import tick_key, to_micros
from pywork.encoding import encode_job
from pywork.errors import SerializationError
from tests.servers import PostgresServer

OpenPg = Callable[..., Awaitable[PostgresBroker]]


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty schema."""
    return f"{postgres_server.url}?schema=t{uuid.uuid4().hex}"


@pytest.fixture
async def open_pg(pg_url: str) -> AsyncIterator[OpenPg]:
    """``await open_pg(url=pg_url)``; every broker is closed afterwards."""
    opened: list[PostgresBroker] = []

    async def open_(url: str | None = None) -> PostgresBroker:
        broker = await PostgresBroker.from_url(url or pg_url)
        opened.append(broker)
        return broker

    yield open_
    for broker in reversed(opened):
        await broker.close()


@pytest.fixture
async def broker(open_pg: OpenPg) -> PostgresBroker:
    return await open_pg()


async def sql(broker: PostgresBroker, query: str, *args: object) -> object:
    schema = broker._schema
    query = query.replace("{jobs}", f"{schema}.jobs").replace("{schedules}", f"{schema}.schedules")
    async with broker.pool.acquire() as conn:
        return await conn.fetchval(query, *args)


def view(records: list[ScheduleRecord]) -> list[tuple[object, ...]]:
    """Records as comparable tuples (a Job compares by identity)."""
    return [
        (r.name, encode_job(r.job), r.every, r.cron, r.timezone, r.next_run_at, r.last_run_at,
         r.jitter, r.misfire)
        for r in records
    ]  # fmt: skip


def tick_jobs(record: ScheduleRecord, *ticks: datetime) -> list[tuple[Job, float | None]]:
    """The jobs the ticker would fire for `ticks` (no jitter)."""
    return [record.spec.job_for(record.name, record.job, tick) for tick in ticks]


async def fire_next(broker: PostgresBroker, record: ScheduleRecord) -> bool:
    """Fire `record`'s next tick as a consumer would, moving it one step on."""
    tick = record.next_run_at
    return await broker.fire(
        record.name, tick, tick + timedelta(seconds=60), tick, tick_jobs(record, tick)
    )


# ---------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------
async def test_schedules_table_is_created_and_an_older_schema_gets_it(
    pg_url: str, open_pg: OpenPg
) -> None:
    broker = await open_pg()
    store: ScheduleStore = broker  # the protocol, as the ticker sees it
    assert await store.schedules() == []
    table = await sql(broker, "SELECT to_regclass($1)::text", f"{broker._schema}.schedules")
    assert table == f"{broker.schema}.schedules"
    index = await sql(
        broker,
        "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND tablename = 'schedules' "
        "AND indexdef LIKE '%(next_run_at)%'",
        broker.schema,
    )
    assert index == 1

    # a schema made by the previous version (jobs only, stamped v1) gets the table at connect
    await sql(broker, "DROP TABLE {schedules}")
    await sql(broker, "COMMENT ON TABLE {jobs} IS 'pywork jobs v1'")
    job_id = await broker.enqueue(Job("kept"))
    upgraded = await open_pg()
    await upgraded.schedule("s", Job("x"), every=60)
    assert [r.name for r in await upgraded.schedules()] == ["s"]
    assert await upgraded.get(job_id) is not None  # the jobs were left alone
    comment = await sql(
        upgraded, "SELECT obj_description(to_regclass($1), 'pg_class')", f"{broker._schema}.jobs"
    )
    assert comment == pg.SCHEMA_VERSION != "pywork jobs v1"


async def test_times_are_stored_as_integer_microseconds(broker: PostgresBroker) -> None:
    record = await broker.schedule("m", Job("x"), every=30)
    stored = await sql(broker, "SELECT next_run_at FROM {schedules} WHERE name = 'm'")
    assert isinstance(stored, int) and stored == to_micros(record.next_run_at)
    assert await sql(broker, "SELECT job FROM {schedules}") == encode_job(record.job)


# ---------------------------------------------------------------------------------------
# declaring
# ---------------------------------------------------------------------------------------
async def test_schedule_validates_and_stores_nothing_on_bad_input(broker: PostgresBroker) -> None:
    with pytest.raises(TypeError, match="name"):
        await broker.schedule(3, Job("x"), every=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        await broker.schedule("", Job("x"), every=1)
    with pytest.raises(TypeError, match="Job"):
        await broker.schedule("s", "x", every=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly one"):
        await broker.schedule("s", Job("x"), every=1, cron="* * * * *")
    with pytest.raises(ValueError, match="hour"):
        await broker.schedule("s", Job("x"), cron="0 25 * * *")
    with pytest.raises(ValueError, match="timezone"):
        await broker.schedule("s", Job("x"), cron="0 9 * * *", timezone="Mars/Olympus")
    with pytest.raises(SerializationError):
        await broker.schedule("s", Job("x", {"when": datetime.now(UTC)}), every=1)
    assert await broker.schedules() == []
    with pytest.raises(ValueError, match="aware"):
        await broker.due_schedules(datetime(2030, 1, 1))
    now = datetime.now(UTC)
    with pytest.raises(TypeError, match="pairs"):
        await broker.fire("s", now, now, now, [Job("x")])  # type: ignore[list-item]


async def test_redeclaring_keeps_next_run_only_when_the_timing_is_unchanged(
    broker: PostgresBroker,
) -> None:
    first = await broker.schedule("report", Job("report", {"v": 1}), every=60)
    assert first.last_run_at is None and first.next_run_at > datetime.now(UTC)
    assert await fire_next(broker, first) is True
    (fired,) = await broker.schedules()
    assert fired.last_run_at == first.next_run_at

    # same every: next and last run kept; the job, jitter and misfire are replaced
    again = await broker.schedule(
        "report", Job("report", {"v": 2}), every=60.0, jitter=5, misfire="all"
    )
    assert (again.next_run_at, again.last_run_at) == (fired.next_run_at, fired.last_run_at)
    assert (again.job.args, again.jitter, again.misfire) == ({"v": 2}, 5.0, "all")
    assert view(await broker.schedules()) == view([again])

    # a new interval: the next run is computed afresh (and nothing is fired), last run kept
    before = datetime.now(UTC)
    changed = await broker.schedule("report", Job("report"), every=3600)
    assert changed.next_run_at >= before + timedelta(seconds=3600)
    assert changed.last_run_at == fired.last_run_at
    # to cron and back: new timings too
    cron = await broker.schedule("report", Job("report"), cron="0 9 * * *", timezone="Europe/Paris")
    assert (cron.every, cron.cron, cron.timezone) == (None, "0 9 * * *", "Europe/Paris")
    same_cron = await broker.schedule(
        "report", Job("report"), cron="0  9 * * *", timezone="Europe/Paris"
    )
    assert same_cron.next_run_at == cron.next_run_at  # the crontab is normalised
    other_zone = await broker.schedule("report", Job("report"), cron="0 9 * * *", timezone="UTC")
    assert other_zone.next_run_at != cron.next_run_at
    assert await sql(broker, "SELECT count(*) FROM {jobs}") == 1  # only the explicit fire


async def test_concurrent_declarations_agree(open_pg: OpenPg) -> None:
    brokers = [await open_pg() for _ in range(4)]
    records = await asyncio.gather(
        *(b.schedule("same", Job("x"), every=10) for b in brokers for _ in range(3))
    )
    (stored,) = await brokers[0].schedules()
    # the first declaration set next_run_at; every later one kept it
    assert {r.next_run_at for r in records} == {stored.next_run_at}


async def test_schedules_persist_across_reconnects(pg_url: str) -> None:
    async with pywork.connect(pg_url) as broker:
        assert isinstance(broker, PostgresBroker)
        declared = [
            await broker.schedule("b-cron", Job("c", queue="q"), cron="*/5 * * * *", jitter=1.5),
            await broker.schedule("a-every", Job("e", {"n": [1, 2]}), every=0.25, misfire="all"),
        ]
        assert await fire_next(broker, declared[1]) is True
        before = await broker.schedules()
    async with pywork.connect(pg_url) as broker:
        assert isinstance(broker, PostgresBroker)
        after = await broker.schedules()
        assert view(after) == view(before) and [r.name for r in after] == ["a-every", "b-cron"]
        assert after[0].last_run_at == declared[1].next_run_at
        assert after[0].job.id == declared[1].job.id and after[0].job.args == {"n": [1, 2]}
        assert all(r.next_run_at.tzinfo is UTC for r in after)
        # and the next fire of the reconnected broker continues from the stored time
        assert await fire_next(broker, after[0]) is True
        assert await fire_next(broker, after[0]) is False


async def test_unschedule(broker: PostgresBroker) -> None:
    record = await broker.schedule("gone", Job("x"), every=5)
    assert await broker.unschedule("gone") is True
    assert await broker.unschedule("gone") is False
    assert await broker.schedules() == []
    # a consumer that read it before: its fire changes nothing and stores no job
    assert await fire_next(broker, record) is False
    assert await sql(broker, "SELECT count(*) FROM {jobs}") == 0
    with pytest.raises(ValueError, match="name"):
        await broker.unschedule("")


# ---------------------------------------------------------------------------------------
# finding due schedules
# ---------------------------------------------------------------------------------------
async def test_due_schedules_returns_due_ones_and_the_next_due_time(
    broker: PostgresBroker,
) -> None:
    now = datetime.now(UTC)
    assert await broker.due_schedules(now) == ([], None)
    soon = await broker.schedule("soon", Job("x"), every=10)
    later = await broker.schedule("later", Job("x"), every=20)
    due, earliest = await broker.due_schedules(now)
    assert due == [] and earliest == soon.next_run_at

    # at the boundary a schedule is due (next_run_at <= at), oldest first
    due, earliest = await broker.due_schedules(soon.next_run_at)
    assert view(due) == view([soon]) and earliest == later.next_run_at
    due, earliest = await broker.due_schedules(later.next_run_at + timedelta(hours=1))
    assert view(due) == view([soon, later]) and earliest is None
    one_before = soon.next_run_at - timedelta(microseconds=1)
    assert await broker.due_schedules(one_before) == ([], soon.next_run_at)


# ---------------------------------------------------------------------------------------
# firing
# ---------------------------------------------------------------------------------------
async def test_fire_is_a_compare_and_set_that_enqueues_the_ticks(broker: PostgresBroker) -> None:
    record = await broker.schedule(
        "t", Job("tick", {"a": 1}, queue="ticks", max_retries=2), every=1
    )
    t0 = record.next_run_at
    ticks = [t0, t0 + timedelta(seconds=1), t0 + timedelta(seconds=2)]
    new_next = t0 + timedelta(seconds=3)
    wrong = t0 + timedelta(microseconds=1)
    assert await broker.fire("t", wrong, new_next, ticks[-1], tick_jobs(record, *ticks)) is False
    assert await sql(broker, "SELECT count(*) FROM {jobs}") == 0

    jobs = tick_jobs(record, *ticks)
    assert await broker.fire("t", t0, new_next, ticks[-1], jobs) is True
    (stored,) = await broker.schedules()
    assert (stored.next_run_at, stored.last_run_at) == (new_next, ticks[-1])
    for (job, _), tick in zip(jobs, ticks, strict=True):
        got = await broker.get(job.id)
        assert got is not None and got.state == JobState.QUEUED
        assert (got.key, got.queue, got.handler, got.args) == (
            tick_key("t", tick),
            "ticks",
            "tick",
            {"a": 1},
        )
    # the same expected value again (a slower consumer): nothing
    assert await broker.fire("t", t0, new_next, ticks[-1], tick_jobs(record, *ticks)) is False
    assert await sql(broker, "SELECT count(*) FROM {jobs}") == 3
    claimed = await broker.claim(["ticks"], 10, lease=30, max_retries=5)
    assert [d.id for d in claimed] == [job.id for job, _ in jobs]  # in tick order
    assert claimed[0].job is not None and claimed[0].job.max_retries == 2


async def test_fire_keeps_declared_headers_and_honours_delay_and_keys(
    broker: PostgresBroker,
) -> None:
    record = await broker.schedule("h", Job("x", headers={"tenant": "a"}), every=1)
    t0 = record.next_run_at
    (first, _), (second, _) = tick_jobs(record, t0, t0 + timedelta(seconds=1))
    # a live job already holds the first tick's key: that one is skipped, the fire still wins
    holder = await broker.enqueue(Job("x", key=first.key))
    step = timedelta(seconds=1)
    won = await broker.fire("h", t0, t0 + 2 * step, t0 + step, [(first, None), (second, 30.0)])
    assert won is True
    assert await broker.get(first.id) is None
    assert await sql(broker, "SELECT id FROM {jobs} WHERE key = $1", first.key) == holder
    delayed = await broker.get(second.id)
    assert delayed is not None and delayed.state == JobState.SCHEDULED
    assert delayed.run_at is not None
    assert delayed.run_at > datetime.now(UTC) + timedelta(seconds=20)
    payload = await sql(broker, "SELECT payload FROM {jobs} WHERE id = $1", second.id)
    assert payload == encode_job(second)  # the declared headers, exactly (no trace context)
    assert (await broker.stats())["default"].scheduled == 1


async def test_a_failed_fire_changes_nothing(broker: PostgresBroker) -> None:
    record = await broker.schedule("f", Job("x"), every=1)
    taken = await broker.enqueue(Job("x"))
    t0 = record.next_run_at
    (fresh, _) = tick_jobs(record, t0)[0]
    clash = Job("x", id=taken)
    with pytest.raises(ValueError, match="already stored"):
        await broker.fire("f", t0, t0 + timedelta(seconds=1), t0, [(fresh, None), (clash, None)])
    assert view(await broker.schedules()) == view(
        [record]
    )  # the UPDATE was rolled back with the inserts
    assert await broker.get(fresh.id) is None


async def test_concurrent_fires_of_one_tick_have_one_winner(open_pg: OpenPg) -> None:
    # 8 consumers (each its own broker, so its own connections) race on every tick
    brokers = [await open_pg() for _ in range(8)]
    record = await brokers[0].schedule("race", Job("x"), every=1)
    step = timedelta(seconds=1)
    all_jobs: list[str] = []
    for round_ in range(15):
        tick = record.next_run_at + round_ * step
        start = asyncio.Event()

        async def contend(
            broker: PostgresBroker, tick: datetime = tick, start: asyncio.Event = start
        ) -> tuple[bool, str]:
            job, delay = tick_jobs(record, tick)[0]
            await start.wait()
            return await broker.fire("race", tick, tick + step, tick, [(job, delay)]), job.id

        tasks = [asyncio.create_task(contend(b)) for b in brokers]
        await asyncio.sleep(0)
        start.set()
        results = await asyncio.gather(*tasks)
        winners = [job_id for won, job_id in results if won]
        assert len(winners) == 1, results
        all_jobs.extend(winners)
    keys = await brokers[0].pool.fetch(f"SELECT id, key FROM {brokers[0]._schema}.jobs")
    assert sorted(r["id"] for r in keys) == sorted(all_jobs)
    assert len({r["key"] for r in keys}) == 15  # one job per tick
    (stored,) = await brokers[0].schedules()
    assert stored.next_run_at == record.next_run_at + 15 * step


async def test_fire_wakes_a_waiting_consumer(open_pg: OpenPg) -> None:
    consumer, ticker = await open_pg(), await open_pg()
    record = await ticker.schedule("wake", Job("x", queue="woken"), every=60)
    await consumer.wait_for_work(["woken"], 0.01)  # the LISTEN connection is open
    waiting = asyncio.create_task(consumer.wait_for_work(["woken"], 60.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert await fire_next(ticker, record) is True
    await asyncio.wait_for(waiting, 10.0)
    assert len(await consumer.claim(["woken"], 5, lease=30, max_retries=3)) == 1


async def test_a_worker_fires_due_schedules_once_across_consumers(
    open_pg: OpenPg, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a schedule whose tick is due (the consumers' clock is moved past it)
    from pywork import cron
    from pywork.ticker import fire_due

    brokers = [await open_pg() for _ in range(4)]
    record = await brokers[0].schedule("due", Job("x"), every=2, misfire="all")
    late = record.next_run_at + timedelta(seconds=4.5)  # ticks +0, +2 and +4 are due
    monkeypatch.setattr(cron, "now", lambda: late)
    # When four consumers' tickers look at once
    logger = logging.getLogger("pywork")
    sleeps = await asyncio.gather(*(fire_due(b, logger) for b in brokers))
    # Then the three ticks were fired once, and everyone sleeps until the next one
    keys = await brokers[0].pool.fetch(f"SELECT key FROM {brokers[0]._schema}.jobs ORDER BY seq")
    ticks = [record.next_run_at + timedelta(seconds=s) for s in (0, 2, 4)]
    assert [r["key"] for r in keys] == [tick_key("due", t) for t in ticks]
    (stored,) = await brokers[0].schedules()
    assert stored.next_run_at == record.next_run_at + timedelta(seconds=6)
    assert stored.last_run_at == ticks[-1]
    assert all(0 < s <= 1.5 for s in sleeps)


async def test_a_fire_blocked_behind_another_sees_its_commit(open_pg: OpenPg) -> None:
    # the interleaving the race above may or may not hit: B's UPDATE waits for A's row
    # lock, then re-reads next_run_at (changed by A) and matches nothing
    a, b = await open_pg(), await open_pg()
    record = await a.schedule("lock", Job("x"), every=1)
    tick = record.next_run_at
    step = timedelta(seconds=1)
    async with a.pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        (job_a, _) = tick_jobs(record, tick)[0]
        won = await conn.fetchval(
            a._sql["fire"], [job_a.id], [job_a.queue], [job_a.handler], [job_a.key], [None],
            [encode_job(job_a)], [None], [None], a._channel, "lock",
            to_micros(tick), to_micros(tick + step), to_micros(tick),
        )  # fmt: skip
        assert won == 1
        blocked = asyncio.create_task(fire_next(b, record))
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND position($1 in query) > 0"
        )
        deadline = asyncio.get_running_loop().time() + 10.0
        while not await sql(a, waiting, f"{a._schema}.schedules"):  # B waits for A's lock
            assert asyncio.get_running_loop().time() < deadline and not blocked.done()
            await asyncio.sleep(0.01)
        await transaction.commit()
    assert await asyncio.wait_for(blocked, 10.0) is False
    assert await sql(a, "SELECT count(*) FROM {jobs}") == 1
    assert await sql(a, "SELECT id FROM {jobs}") == job_a.id
