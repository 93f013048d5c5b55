"""PostgresBroker specifics, on a real PostgreSQL: storage, concurrency, NOTIFY, restarts.

The behaviour every broker shares is in test_contract.py; these tests cover what only
the PostgreSQL backend does (its table, its statements, its connections).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

import pywork
from pywork import Job, JobState, Status, Worker
from pywork.brokers import Broker, Delivery, Outcome, QueueStats
from pywork.brokers import postgres as pg
from pywork.brokers.postgres import PostgresBroker
from pywork.encoding import encode_job
from pywork.errors import BrokerError, BrokerUnavailable
from tests.brokers.support import FAST, consuming, record_in
from tests.servers import PostgresServer, free_port

OpenPg = Callable[..., Awaitable[PostgresBroker]]


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty schema."""
    return f"{postgres_server.url}?schema=t{uuid.uuid4().hex}"


@pytest.fixture
async def open_pg(pg_url: str) -> AsyncIterator[OpenPg]:
    """``await open_pg(url=pg_url, retention=3600.0)``; every broker is closed afterwards."""
    opened: list[PostgresBroker] = []

    async def open_(url: str | None = None, *, retention: float = 3600.0) -> PostgresBroker:
        broker = await PostgresBroker.from_url(url or pg_url, retention=retention)
        opened.append(broker)
        return broker

    yield open_
    for broker in reversed(opened):
        await broker.close()


@pytest.fixture
async def broker(open_pg: OpenPg) -> PostgresBroker:
    return await open_pg()


async def claim_all(
    broker: PostgresBroker,
    queues: list[str] | None = None,
    *,
    lease: float = 30.0,
    max_retries: int = 3,
) -> list[Delivery]:
    return await broker.claim(queues or ["default"], 1000, lease=lease, max_retries=max_retries)


async def claim_after_wait(
    broker: PostgresBroker, *, lease: float = 30.0, max_retries: int = 3, timeout: float = 10.0
) -> list[Delivery]:
    """Sleep in wait_for_work() until a claim returns something (a due job, an expired lease)."""
    deadline = time.monotonic() + timeout
    while True:
        claimed = await broker.claim(["default"], 10, lease=lease, max_retries=max_retries)
        if claimed:
            return claimed
        assert time.monotonic() < deadline, "nothing became claimable"
        await broker.wait_for_work(["default"], 5.0)


async def sql(broker: PostgresBroker, query: str, *args: object) -> object:
    async with broker.pool.acquire() as conn:
        return await conn.fetchval(query.replace("{jobs}", f"{broker._schema}.jobs"), *args)


# ---------------------------------------------------------------------------------------
# connecting
# ---------------------------------------------------------------------------------------
async def test_connect_picks_postgres_by_scheme_and_creates_the_schema(pg_url: str) -> None:
    async with pywork.connect(pg_url, retention=60) as broker:
        _: Broker = broker
        assert isinstance(broker, PostgresBroker)
        assert broker.retention == 60.0 and broker.url == pg_url
        assert broker.schema == pg_url.rsplit("=", 1)[1]
        comment = await sql(broker, "SELECT obj_description(to_regclass($1), 'pg_class')",
                            f"{broker._schema}.jobs")  # fmt: skip
        assert comment == pg.SCHEMA_VERSION
    postgres_url = pg_url.replace("postgresql://", "postgres://", 1)
    async with pywork.connect(postgres_url) as broker:  # the same store, other scheme
        assert isinstance(broker, PostgresBroker)


async def test_default_schema_is_pywork(postgres_server: PostgresServer) -> None:
    async with pywork.connect(postgres_server.url) as broker:
        assert isinstance(broker, PostgresBroker)
        assert broker.schema == "pywork"
        assert await sql(broker, "SELECT to_regclass('pywork.jobs')::text") == "pywork.jobs"


async def test_many_processes_connecting_at_once_create_the_table_once(pg_url: str) -> None:
    brokers = await asyncio.gather(*(PostgresBroker.from_url(pg_url) for _ in range(8)))
    try:
        ids = await asyncio.gather(*(b.enqueue(Job("x")) for b in brokers))
        assert (await brokers[0].stats())["default"].queued == len(set(ids)) == 8
    finally:
        for b in brokers:
            await b.close()


async def test_url_options_are_validated_and_not_sent_to_the_server(
    postgres_server: PostgresServer,
) -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        await PostgresBroker.from_url("mysql://x/y")
    with pytest.raises(ValueError, match="schema"):
        await PostgresBroker.from_url(f"{postgres_server.url}?schema=")
    with pytest.raises(ValueError, match="schema"):
        await PostgresBroker.from_url(f"{postgres_server.url}?schema={'s' * 64}")
    with pytest.raises(ValueError, match="pool_size"):
        await PostgresBroker.from_url(f"{postgres_server.url}?pool_size=0")
    with pytest.raises(ValueError, match="retention"):
        await PostgresBroker.from_url(postgres_server.url, retention=-1)
    url = f"{postgres_server.url}?schema=Mixed-Case&pool_size=2&application_name=x"
    async with pywork.connect(url) as broker:
        assert isinstance(broker, PostgresBroker) and broker.schema == "Mixed-Case"
        await broker.enqueue(Job("x"))
        assert await sql(broker, "SELECT count(*) FROM {jobs}") == 1
        assert broker.pool.get_max_size() == 2
        twin = await broker.twin()  # the lease-renewal thread's: one connection is enough
        try:
            assert twin.schema == "Mixed-Case" and twin.pool.get_max_size() == 1
        finally:
            await twin.close()
        assert await sql(broker, "SELECT current_setting('application_name')") == "x"


async def test_a_long_schema_name_still_gets_notifications(
    postgres_server: PostgresServer,
) -> None:
    schema = "ü" * 31 + uuid.uuid4().hex[:1]  # 63 bytes: too long for "pywork." + it
    async with pywork.connect(f"{postgres_server.url}?schema={schema}") as broker:
        assert isinstance(broker, PostgresBroker)
        await broker.wait_for_work(["q"], 0.01)  # the LISTEN connection is open
        waiting = asyncio.create_task(broker.wait_for_work(["q"], 30.0))
        await asyncio.sleep(0.05)
        await broker.enqueue(Job("x", queue="q"))
        await asyncio.wait_for(waiting, 10.0)


async def test_an_unreachable_server_is_broker_unavailable_naming_host_and_port() -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://app:s3cr3t-pw@127.0.0.1:{port}/db?schema=x"
    with pytest.raises(
        BrokerUnavailable, match=f"cannot reach PostgreSQL at 127.0.0.1:{port}"
    ) as info:
        await PostgresBroker.from_url(url)
    assert isinstance(info.value, ConnectionError)
    assert "s3cr3t-pw" not in str(info.value) and "s3cr3t-pw" not in repr(info.value)


async def test_other_server_errors_are_broker_errors_and_a_duplicate_id_a_value_error(
    broker: PostgresBroker,
) -> None:
    job_id = await broker.enqueue(Job("x"))
    with pytest.raises(ValueError, match=f"a job with id '{job_id}' is already stored"):
        await broker.enqueue_many([Job("x"), Job("x", id=job_id)])
    await sql(broker, "DROP TABLE {jobs}")
    with pytest.raises(BrokerError, match="UndefinedTableError") as info:
        await broker.get(job_id)
    assert not isinstance(info.value, BrokerUnavailable)


# ---------------------------------------------------------------------------------------
# storage
# ---------------------------------------------------------------------------------------
async def test_payload_is_stored_byte_for_byte(broker: PostgresBroker) -> None:
    # floats that jsonb would turn into integers, and NUL, which jsonb refuses
    job = Job("x", {"big": 1e20, "tiny": 1.5e-300, "nul": "a\x00b", "ü": "✓"})
    await broker.enqueue(job)
    stored = await sql(broker, "SELECT payload FROM {jobs} WHERE id = $1", job.id)
    assert stored == encode_job(job)
    (delivery,) = await claim_all(broker)
    assert delivery.job is not None and delivery.job.args == job.args
    assert isinstance(delivery.job.args["big"], float)
    # and args stay queryable in SQL
    other = await broker.enqueue(Job("x", {"user": {"name": "zoë"}}))
    query = "SELECT convert_from(payload, 'UTF8')::jsonb #>> '{args,user,name}' FROM {jobs}"
    assert await sql(broker, f"{query} WHERE id = $1", other) == "zoë"


async def test_enqueue_many_is_one_transaction_and_keeps_order(broker: PostgresBroker) -> None:
    jobs = [Job("x", {"i": i}, queue="ab"[i % 2]) for i in range(300)]
    assert await broker.enqueue_many(jobs) == [job.id for job in jobs]
    # every row was written by one transaction (one statement, one round trip)
    assert await sql(broker, "SELECT count(DISTINCT xmin::text) FROM {jobs}") == 1
    claimed = await claim_all(broker, ["a", "b"])
    assert [d.id for d in claimed] == [job.id for job in jobs]

    # a batch holding an id already stored stores nothing
    fresh = [Job("x") for _ in range(3)]
    with pytest.raises(ValueError, match="already stored"):
        await broker.enqueue_many([*fresh, Job("x", id=jobs[0].id)])
    assert all([await broker.get(job.id) is None for job in fresh])
    with pytest.raises(ValueError, match="already stored"):
        await broker.enqueue(Job("x", id=jobs[1].id))


async def test_unique_key_holds_under_concurrent_enqueues(open_pg: OpenPg) -> None:
    brokers = [await open_pg() for _ in range(4)]
    jobs = [Job("x", key="only-one") for _ in range(40)]
    ids = await asyncio.gather(*(brokers[i % 4].enqueue(job) for i, job in enumerate(jobs)))
    assert len(set(ids)) == 1
    assert await sql(brokers[0], "SELECT count(*) FROM {jobs}") == 1

    # a dead job frees its key; retried while another job holds it, it loses the key
    broker = brokers[0]
    (delivery,) = await claim_all(broker)
    outcome = Outcome(delivery, JobState.DEAD, Status.BAD_REQUEST, "BadRequest: no")
    assert await broker.settle([outcome]) == [True]
    newer = Job("x", key="only-one")
    assert await broker.enqueue(newer) == newer.id
    assert await broker.retry_dead(ids[0]) is True
    record = await broker.get(ids[0])
    assert record is not None and record.state == JobState.QUEUED and record.key is None
    holder = await broker.get(newer.id)
    assert holder is not None and holder.key == "only-one"


async def test_undecodable_payload_is_delivered_with_an_error(broker: PostgresBroker) -> None:
    job_id = await broker.enqueue(Job("x", {"a": 1}))
    await sql(broker, "UPDATE {jobs} SET payload = $1 WHERE id = $2", b"\xff{not json", job_id)
    (delivery,) = await claim_all(broker)
    assert (delivery.id, delivery.job, delivery.attempt) == (job_id, None, 1)
    assert delivery.error is not None and delivery.error.startswith("DecodeError:")
    record = await broker.get(job_id)
    assert record is not None and record.handler == "x" and record.args == {}


# ---------------------------------------------------------------------------------------
# claiming, leases, fencing
# ---------------------------------------------------------------------------------------
async def test_claim_renew_settle_flow(broker: PostgresBroker) -> None:
    job_id = await broker.enqueue(Job("x", {"n": 1}))
    (delivery,) = await claim_all(broker, lease=30.0)
    assert delivery.attempt == 1 and delivery.job is not None and delivery.job.args == {"n": 1}
    record = await broker.get(job_id)
    assert record is not None and record.state == JobState.RUNNING
    before = await sql(broker, "SELECT lease_until FROM {jobs}")
    assert await broker.renew([delivery], lease=60.0) == {}
    after = await sql(broker, "SELECT lease_until FROM {jobs}")
    assert isinstance(before, datetime) and isinstance(after, datetime) and after > before

    # failed: waits for its retry, then is claimed again as attempt 2
    failed = Outcome(delivery, JobState.FAILED, Status.UNAVAILABLE, "Unavailable: x", 0.2)
    assert await broker.settle([failed]) == [True]
    record = await broker.get(job_id)
    assert record is not None and record.state == JobState.FAILED and record.run_at is not None
    assert record.error == "Unavailable: x" and record.status == Status.UNAVAILABLE
    (again,) = await claim_after_wait(broker)
    assert again.attempt == 2 and again.token != delivery.token

    # released at shutdown: the attempt is given back and it is ready at once
    assert await broker.settle([Outcome(again, JobState.QUEUED)]) == [True]
    (third,) = await claim_all(broker)
    assert third.attempt == 2
    done = Outcome(third, JobState.SUCCEEDED, Status.SUCCESS)
    assert await broker.settle([done, done]) == [True, False]  # one outcome per lease
    record = await broker.get(job_id)
    assert record is not None and record.state == JobState.SUCCEEDED
    assert (record.status, record.error, record.attempts) == (Status.SUCCESS, None, 2)
    with pytest.raises(ValueError, match="state must be succeeded, failed, dead or queued"):
        await broker.settle([Outcome(third, JobState.RUNNING)])


async def test_expired_lease_is_reclaimed_with_a_new_token_and_the_old_one_is_fenced(
    broker: PostgresBroker,
) -> None:
    job_id = await broker.enqueue(Job("x"))
    (first,) = await claim_all(broker, lease=0.2)
    # wait() wakes when the lease expires, without a NOTIFY
    (second,) = await claim_after_wait(broker, lease=30.0)
    assert second.id == job_id and second.attempt == 2 and second.token != first.token

    # the first holder can neither renew nor settle
    assert await broker.renew([first, second], lease=30.0) == {job_id: "lost"}
    assert await broker.settle([Outcome(first, JobState.SUCCEEDED, Status.SUCCESS)]) == [False]
    record = await broker.get(job_id)
    assert record is not None and record.state == JobState.RUNNING and record.attempts == 2
    assert await broker.settle([Outcome(second, JobState.SUCCEEDED, Status.SUCCESS)]) == [True]


async def test_lease_expiries_count_as_attempts_until_dead(broker: PostgresBroker) -> None:
    plain = await broker.enqueue(Job("x"))
    own = await broker.enqueue(Job("x", max_retries=0))
    claimed = await claim_all(broker, lease=0.2, max_retries=1)
    assert {d.id for d in claimed} == {plain, own}
    # own max_retries=0: dead at the first expiry; the other (max_retries 1) runs again
    (again,) = await claim_after_wait(broker, lease=0.2, max_retries=1)
    assert (again.id, again.attempt) == (plain, 2)
    dead = await broker.get(own)
    assert dead is not None and dead.state == JobState.DEAD and dead.status == Status.TIMEOUT
    assert dead.error is not None and dead.error.startswith("JobTimeout: lease expired 1 times")
    assert dead.attempts == 1 and dead.finished_at is not None

    # after its second expiry it is dead too, and nothing is left to claim
    await broker.wait_for_work(["default"], 5.0)
    assert await broker.claim(["default"], 10, lease=30.0, max_retries=1) == []
    record = await broker.get(plain)
    assert record is not None and record.state == JobState.DEAD and record.attempts == 2
    assert [r.id for r in await broker.dead_letters()] == [own, plain]


async def test_concurrent_claimers_never_share_a_job(open_pg: OpenPg) -> None:
    brokers = [await open_pg() for _ in range(4)]
    jobs = [Job("x", {"i": i}) for i in range(400)]
    await brokers[0].enqueue_many(jobs)

    async def drain(broker: PostgresBroker) -> list[str]:
        got: list[str] = []
        while claimed := await broker.claim(["default"], 7, lease=30.0, max_retries=3):
            got.extend(d.id for d in claimed)
        return got

    results = await asyncio.gather(*(drain(b) for b in brokers))
    everything = [job_id for ids in results for job_id in ids]
    assert sorted(everything) == sorted(job.id for job in jobs)  # each exactly once


async def test_cancel_running_job_is_reported_by_renew(broker: PostgresBroker) -> None:
    job_id = await broker.enqueue(Job("x"))
    (delivery,) = await claim_all(broker)
    assert await broker.cancel(job_id) is True
    assert await broker.cancel(job_id) is False
    assert await broker.renew([delivery], lease=30.0) == {job_id: "cancelled"}
    assert await broker.settle([Outcome(delivery, JobState.SUCCEEDED, Status.SUCCESS)]) == [False]
    record = await broker.get(job_id)
    assert record is not None and record.state == JobState.CANCELLED


# ---------------------------------------------------------------------------------------
# waiting: NOTIFY and due times
# ---------------------------------------------------------------------------------------
async def test_wait_is_woken_by_an_enqueue_from_another_connection(open_pg: OpenPg) -> None:
    consumer, producer = await open_pg(), await open_pg()
    await consumer.wait_for_work(["mail"], 0.01)  # the LISTEN connection is open
    started = time.monotonic()
    waiting = asyncio.create_task(consumer.wait_for_work(["mail"], 30.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await producer.enqueue(Job("x", queue="mail"))
    await asyncio.wait_for(waiting, 10.0)
    assert time.monotonic() - started < 10.0
    assert len(await consumer.claim(["mail"], 5, lease=30.0, max_retries=3)) == 1


async def test_wait_returns_at_once_when_work_is_ready(broker: PostgresBroker) -> None:
    await broker.enqueue(Job("x"))
    await asyncio.wait_for(broker.wait_for_work(["default"], 30.0), 5.0)


async def test_wait_sleeps_until_a_delayed_job_is_due(broker: PostgresBroker) -> None:
    at = datetime.now(UTC) + timedelta(seconds=0.4)
    job_id = await broker.enqueue(Job("x"), at=at)
    stats = await broker.stats()
    assert stats["default"] == QueueStats(scheduled=1)
    assert await broker.claim(["default"], 10, lease=30.0, max_retries=3) == []
    started = time.monotonic()
    await broker.wait_for_work(["default"], 30.0)  # nothing is enqueued: only the due time wakes it
    assert time.monotonic() - started < 10.0
    assert datetime.now(UTC) >= at - timedelta(milliseconds=50)  # not before it was due
    (delivery,) = await claim_after_wait(broker)
    assert delivery.id == job_id
    assert (await broker.stats())["default"] == QueueStats(running=1)


# ---------------------------------------------------------------------------------------
# retention
# ---------------------------------------------------------------------------------------
async def test_retention_zero_deletes_at_once_but_a_cancelled_run_waits_for_its_lease(
    open_pg: OpenPg,
) -> None:
    broker = await open_pg(retention=0)
    done, running = await broker.enqueue(Job("x")), await broker.enqueue(Job("x"))
    first, second = await claim_all(broker)
    assert await broker.settle([Outcome(first, JobState.SUCCEEDED, Status.SUCCESS)]) == [True]
    assert await sql(broker, "SELECT count(*) FROM {jobs} WHERE id = $1", done) == 0
    # cancelled while running: kept until its lease ends, so its consumer learns of it
    assert await broker.cancel(running) is True
    assert await broker.renew([second], lease=30.0) == {running: "cancelled"}


async def test_expired_records_disappear_and_are_deleted_lazily(
    open_pg: OpenPg, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg, "PURGE_EVERY", 0.0)
    broker = await open_pg(retention=0.3)
    ids = await broker.enqueue_many([Job("x") for _ in range(3)])
    claimed = await claim_all(broker)
    outcomes = [Outcome(d, JobState.SUCCEEDED, Status.SUCCESS) for d in claimed]
    assert await broker.settle(outcomes) == [True] * 3
    assert (await broker.stats())["default"].succeeded == 3
    record = await broker.get(ids[0])
    assert record is not None and record.state == JobState.SUCCEEDED
    deadline = time.monotonic() + 10
    while await broker.get(ids[0]) is not None:  # hidden as soon as the retention ends
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert await broker.stats() == {}
    await broker.claim(["other"], 1, lease=30.0, max_retries=3)  # purges on the side
    assert await sql(broker, "SELECT count(*) FROM {jobs}") == 0


# ---------------------------------------------------------------------------------------
# results, progress and wait(job_id): columns, and the finished channel
# ---------------------------------------------------------------------------------------
async def test_a_v2_table_gains_the_result_and_progress_columns(open_pg: OpenPg) -> None:
    # Given a store made by schema v2 (no result/progress columns), with a job in it
    broker = await open_pg()
    job_id = await broker.enqueue(Job("x", {"n": 1}))
    await sql(broker, "ALTER TABLE {jobs} DROP COLUMN result, DROP COLUMN progress")
    await sql(broker, f"COMMENT ON TABLE {broker._schema}.jobs IS 'pywork jobs v2'")
    await broker.close()
    # When a broker of this version connects
    broker = await open_pg()
    # Then the table is migrated and the old job runs and keeps its result
    assert await sql(broker, "SELECT count(*) FROM {jobs} WHERE result IS NULL") == 1
    comment = await sql(broker, "SELECT obj_description(to_regclass($1), 'pg_class')",
                        f"{broker._schema}.jobs")  # fmt: skip
    assert comment == pg.SCHEMA_VERSION
    (delivery,) = await claim_all(broker)
    assert delivery.id == job_id
    outcome = Outcome(delivery, JobState.SUCCEEDED, Status.SUCCESS, result=b'{"ok":1}')
    assert await broker.settle([outcome]) == [True]
    record = await broker.get(job_id)
    assert record is not None and record.result == {"ok": 1}


async def test_progress_is_stored_by_renew_only_where_the_lease_is_held(
    broker: PostgresBroker,
) -> None:
    held, lost = await broker.enqueue(Job("x")), await broker.enqueue(Job("x"))
    mine, theirs = await claim_all(broker)
    stale = Delivery(theirs.id, "not-the-token", theirs.attempt, theirs.job)
    now = datetime.now(UTC)
    reports = {held: pywork.Progress(1, 2, "half", now), lost: pywork.Progress(9, None, None, now)}
    assert await broker.renew([mine, stale], lease=30.0, progress=reports) == {lost: "lost"}
    record = await broker.get(held)
    assert record is not None and record.progress is not None
    assert (record.progress.current, record.progress.total, record.progress.message) == (
        1, 2, "half",
    )  # fmt: skip
    other = await broker.get(lost)
    assert other is not None and other.progress is None
    assert await broker.renew([mine], lease=30.0) == {}  # no report: the last one stays
    again = await broker.get(held)
    assert again is not None and again.progress == record.progress


async def _registered(broker: PostgresBroker, job_id: str) -> None:
    """Register a wait for `job_id` as the front's first call does (and LISTEN)."""
    await broker._wait_for_finish(job_id, 30.0)
    assert job_id in broker._finishing


async def _woken(broker: PostgresBroker, job_id: str, within: float = 5.0) -> None:
    """The primitive wait, with a 30 s timeout (no poll), returns within `within` s."""
    started = time.monotonic()
    await asyncio.wait_for(broker._wait_for_finish(job_id, 30.0), within)
    assert time.monotonic() - started < within


async def test_wait_is_woken_by_the_finished_notification_not_a_poll(open_pg: OpenPg) -> None:
    waiter, consumer = await open_pg(), await open_pg(retention=0)
    done, dead, cancelled, kept = await consumer.enqueue_many([Job("x") for _ in range(4)])
    for job_id in (done, dead, cancelled, kept):
        await _registered(waiter, job_id)
    by_id = {d.id: d for d in await claim_all(consumer)}
    # succeeded (deleted at once: retention 0), dead, cancelled: each wakes its waiter
    settling = asyncio.create_task(
        consumer.settle([
            Outcome(by_id[done], JobState.SUCCEEDED, Status.SUCCESS, result=b"1"),
            Outcome(by_id[dead], JobState.DEAD, Status.BAD_REQUEST, error="no"),
            Outcome(by_id[kept], JobState.FAILED, Status.UNAVAILABLE, retry_in=3600),
        ])
    )  # fmt: skip
    await _woken(waiter, done)
    await _woken(waiter, dead)
    assert await settling == [True, True, True]
    assert await consumer.cancel(cancelled) is True
    await _woken(waiter, cancelled)
    # a retry is not a finish: that waiter sleeps on
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(waiter._wait_for_finish(kept, 30.0), 0.5)


async def test_wait_returns_within_a_fraction_of_the_poll_after_the_settle(
    open_pg: OpenPg,
) -> None:
    waiter, consumer = await open_pg(), await open_pg()
    job_id = await consumer.enqueue(Job("x"))
    waiting = asyncio.create_task(waiter.wait(job_id, timeout=30))
    await asyncio.sleep(0.3)  # registered, asleep in the front's 1 s slice
    (delivery,) = await claim_all(consumer)
    settled = time.monotonic()
    outcome = Outcome(delivery, JobState.SUCCEEDED, Status.SUCCESS, result=b'"r"')
    assert await consumer.settle([outcome]) == [True]
    record = await asyncio.wait_for(waiting, 10.0)
    assert time.monotonic() - settled < 0.5  # the poll alone would take ~0.7 s more
    assert record.result == "r"
    assert waiter._finishing == {}  # nothing left registered


async def test_a_death_by_expired_lease_wakes_the_waiter(broker: PostgresBroker) -> None:
    job_id = await broker.enqueue(Job("x", max_retries=0))
    await claim_all(broker, lease=0.05)
    await _registered(broker, job_id)
    await asyncio.sleep(0.1)
    assert await claim_all(broker) == []  # takes the lease back: attempts 1 > 0, dead
    await _woken(broker, job_id)
    record = await broker.get(job_id)
    assert record is not None and record.state is JobState.DEAD
    assert record.status is Status.TIMEOUT


async def test_a_settle_of_many_long_ids_still_wakes_every_waiter(broker: PostgresBroker) -> None:
    # 100 ids of 120 characters do not fit one notification: '*' wakes every waiter
    long_ids = await broker.enqueue_many([Job("x", id=f"{i:03}" + "x" * 117) for i in range(150)])
    short_ids = await broker.enqueue_many([Job("x") for _ in range(256)])
    for job_id in (long_ids[0], long_ids[-1], short_ids[0], short_ids[-1]):
        await _registered(broker, job_id)
    claimed = await broker.claim(["default"], 1000, lease=30.0, max_retries=3)
    outcomes = [Outcome(d, JobState.SUCCEEDED, Status.SUCCESS) for d in claimed]
    assert await broker.settle(outcomes) == [True] * 406
    for job_id in (long_ids[0], long_ids[-1], short_ids[0], short_ids[-1]):
        await _woken(broker, job_id)


# ---------------------------------------------------------------------------------------
# transactional enqueue: connection=
# ---------------------------------------------------------------------------------------
async def test_a_job_enqueued_in_a_committed_transaction_runs(open_pg: OpenPg) -> None:
    broker = await open_pg()
    await sql(broker, f"CREATE TABLE {broker._schema}.orders (id int PRIMARY KEY)")
    ran: list[int] = []
    worker = Worker()

    @worker.handler("order.mail")
    async def mail(job: Job) -> int:
        ran.append(job.args["order"])
        return int(job.args["order"])

    async with consuming(worker, broker):
        await broker.wait_for_work(["default"], 0.01)  # this broker LISTENs
        waiting = asyncio.create_task(broker.wait_for_work(["default"], 30.0))
        conn = await asyncpg.connect(broker._dsn)  # the application's own connection
        try:
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {broker._schema}.orders VALUES (7)")
                job_id = await broker.enqueue(Job("order.mail", {"order": 7}), connection=conn)
                # Not visible, nor announced, before the commit
                assert await broker.get(job_id) is None
                await asyncio.sleep(0.3)
                assert not waiting.done() and ran == []
            committed = time.monotonic()
            await asyncio.wait_for(waiting, 5.0)  # the NOTIFY came with the commit
            assert time.monotonic() - committed < 1.0
        finally:
            await conn.close()
        record = await broker.wait(job_id, timeout=20)
    assert record.state is JobState.SUCCEEDED and record.result == 7 and ran == [7]


async def test_a_job_enqueued_in_a_rolled_back_transaction_never_exists(
    broker: PostgresBroker,
) -> None:
    await broker.wait_for_work(["default"], 0.01)
    waiting = asyncio.create_task(broker.wait_for_work(["default"], 1.5))
    job = Job("x", key="once")
    with pytest.raises(RuntimeError, match="abort"):
        async with broker.pool.acquire() as conn, conn.transaction():
            assert await broker.enqueue(job, connection=conn) == job.id
            assert await broker.enqueue_many([Job("y")], connection=conn)
            raise RuntimeError("abort")
    started = time.monotonic()
    await asyncio.wait_for(waiting, 10.0)
    assert time.monotonic() - started > 1.0  # only its timeout ended it: nothing was announced
    assert await broker.get(job.id) is None and await broker.stats() == {}
    assert await broker.enqueue(Job("x", key="once")) != job.id  # the key was never taken


async def test_enqueue_many_in_a_transaction_is_all_or_nothing_with_the_transaction(
    broker: PostgresBroker,
) -> None:
    holder = await broker.enqueue(Job("x", key="k"))
    jobs = [Job("x", {"i": i}) for i in range(3)] + [Job("x", key="k")]
    async with broker.pool.acquire() as conn:
        async with conn.transaction():
            ids = await broker.enqueue_many(jobs, connection=conn)
            # the connection sees its own jobs; the key held outside is honoured
            assert ids == [*(j.id for j in jobs[:3]), holder]
            assert await conn.fetchval(f"SELECT count(*) FROM {broker._schema}.jobs") == 4
            assert (await broker.stats())["default"].queued == 1  # others: not yet
        assert (await broker.stats())["default"].queued == 4
        # outside a transaction the connection commits each call on its own
        single = await broker.enqueue(Job("x"), connection=conn)
    record = await broker.get(single)
    assert record is not None and record.state is JobState.QUEUED


async def test_connection_must_be_asyncpg_and_a_duplicate_id_is_the_usual_value_error(
    broker: PostgresBroker,
) -> None:
    for wrong in (object(), broker.pool, "postgresql://x"):
        with pytest.raises(TypeError, match="connection"):
            await broker.enqueue(Job("x"), connection=wrong)
        with pytest.raises(TypeError, match="connection"):
            await broker.enqueue_many([Job("x")], connection=wrong)
    taken = await broker.enqueue(Job("x"))
    first = Job("x")
    async with broker.pool.acquire() as conn:
        with pytest.raises(ValueError, match="already stored"):
            async with conn.transaction():
                await broker.enqueue(first, connection=conn)
                await broker.enqueue(Job("x", id=taken), connection=conn)
        with pytest.raises(ValueError, match="already stored"):
            async with conn.transaction():
                await broker.enqueue_many([Job("x"), Job("x", id=taken)], connection=conn)
    assert await broker.get(first.id) is None  # rolled back with the transaction
    assert (await broker.stats())["default"].queued == 1


# ---------------------------------------------------------------------------------------
# a PostgreSQL restart
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
async def test_restart_while_consuming_loses_nothing(
    postgres_server: PostgresServer, open_pg: OpenPg
) -> None:
    # Given a consumer working through jobs, and a producer
    broker, producer = await open_pg(), await open_pg()
    before = await producer.enqueue_many([Job("x", {"i": i}) for i in range(200)])
    seen: set[str] = set()
    worker = Worker()

    @worker.handler("x")
    async def handle(job: Job) -> None:
        seen.add(job.id)
        await asyncio.sleep(0.002)

    async with consuming(worker, broker, concurrency=8, lease=5.0, **FAST):
        await _until(lambda: len(seen) >= 20)
        # When PostgreSQL restarts under it
        await asyncio.to_thread(postgres_server.restart)
        # Then the pools reconnect: new jobs are stored and every job runs
        after = await _retrying(lambda: producer.enqueue_many([Job("x") for _ in range(50)]))
        for job_id in [*before, *after]:
            await record_in(broker, job_id, [JobState.SUCCEEDED], timeout=30.0)
    assert seen >= {*before, *after}
    stats = (await producer.stats())["default"]
    assert stats == QueueStats(succeeded=250)
    # and the LISTEN connection came back: an enqueue wakes a waiter again
    waiting = asyncio.create_task(broker.wait_for_work(["late"], 30.0))
    await asyncio.sleep(0.05)
    await producer.enqueue(Job("x", queue="late"))
    await asyncio.wait_for(waiting, 10.0)


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def _retrying(call: Callable[[], Awaitable[list[str]]]) -> list[str]:
    """A producer retries a call that failed while the server was coming back."""
    for _ in range(50):
        try:
            return await call()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await asyncio.sleep(0.1)
    return await call()


async def test_a_running_row_without_a_lease_expiry_is_reclaimed(broker: PostgresBroker) -> None:
    # Given a job whose running row lost its lease expiry (a hand edit, an old writer)
    job_id = await broker.enqueue(Job("x"))
    (delivery,) = await broker.claim(["default"], 1, lease=30.0, max_retries=3)
    await sql(broker, "UPDATE {jobs} SET lease_until = NULL WHERE id = $1", job_id)
    # When a consumer runs, it takes the job back and runs it
    worker = Worker()
    worker.register("x", lambda job: None)
    async with consuming(worker, broker):
        record = await record_in(broker, job_id)
    assert (record.state, record.attempts) == (JobState.SUCCEEDED, 2)
    assert delivery.attempt == 1
