"""What only the Redis broker does: its URL, key layout, wake-ups, batching and restarts.

The behaviour every broker shares is in test_contract.py (which runs against Redis too).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider
from redis.exceptions import ConnectionError as RedisConnectionError

import pywork
import pywork.brokers.redis as redis_broker
from pywork import (
    BrokerClosed,
    BrokerError,
    BrokerUnavailable,
    Job,
    JobState,
    Progress,
    Status,
    Worker,
)
from pywork.brokers import Broker, Delivery, Outcome
from pywork.brokers.base import LEASE_EXPIRED
from pywork.brokers.redis import RedisBroker, _pack
from pywork.encoding import encode_job
from tests.brokers.support import claim_one, consuming, record_in, until
from tests.servers import RedisServer, free_port

OpenRedis = Callable[..., Awaitable[RedisBroker]]


def _static_check(broker: RedisBroker) -> Broker:
    return broker  # mypy: RedisBroker implements the Broker protocol


@pytest.fixture
async def open_redis(redis_server: RedisServer) -> AsyncIterator[OpenRedis]:
    """``await open_redis(prefix=None, retention=3600.0)``: a broker, closed after the test."""
    opened: list[RedisBroker] = []

    async def open_(prefix: str | None = None, *, retention: float = 3600.0) -> RedisBroker:
        prefix = prefix or f"t{uuid.uuid4().hex}"
        broker = await RedisBroker.from_url(
            f"{redis_server.url}?prefix={prefix}", retention=retention
        )
        opened.append(broker)
        return broker

    yield open_
    for broker in reversed(opened):
        await broker.close()


@pytest.fixture
async def broker(open_redis: OpenRedis) -> RedisBroker:
    return await open_redis()


async def _keys(broker: RedisBroker) -> list[str]:
    return sorted([k.decode() async for k in broker._client.scan_iter(match=f"{broker._p}*")])


# ---------------------------------------------------------------------------------------
# URL and key layout
# ---------------------------------------------------------------------------------------
async def test_connect_picks_redis_and_strips_the_prefix_from_the_url(
    redis_server: RedisServer,
) -> None:
    prefix = f"t{uuid.uuid4().hex}"
    async with pywork.connect(f"{redis_server.url}?prefix={prefix}", retention=5) as broker:
        assert isinstance(broker, RedisBroker)
        assert (broker.prefix, broker.retention) == (prefix, 5.0)
        assert prefix in repr(broker)
        job_id = await broker.enqueue(Job("x"))
        # every key lives under one Cluster hash tag: {prefix}:...
        keys = await _keys(broker)
        assert f"{{{prefix}}}:job:{job_id}" in keys
        assert all(k.startswith(f"{{{prefix}}}:") for k in keys)
    async with pywork.connect(redis_server.url) as default:
        assert isinstance(default, RedisBroker) and default.prefix == "pywork"


async def test_from_url_rejects_bad_urls_and_unreachable_servers() -> None:
    with pytest.raises(ValueError, match="redis://"):
        await RedisBroker.from_url("http://localhost:6379")
    with pytest.raises(ValueError, match="prefix"):
        await RedisBroker.from_url("redis://localhost:6379/0?prefix=")
    with pytest.raises(ValueError, match="prefix"):
        await RedisBroker.from_url("redis://localhost:6379/0?prefix={x}")
    with pytest.raises(ValueError, match="retention"):
        await RedisBroker.from_url("redis://localhost:6379/0", retention=-1)
    port = free_port()
    with pytest.raises(BrokerUnavailable, match=rf"cannot reach Redis at 127\.0\.0\.1:{port} "):
        await RedisBroker.from_url(f"redis://127.0.0.1:{port}/0")


async def test_an_unreachable_server_names_host_and_port_but_never_the_password() -> None:
    port = free_port()
    with pytest.raises(BrokerUnavailable) as caught:
        await pywork.connect(f"redis://user:s3cr%40t@127.0.0.1:{port}/0?prefix=x")
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "s3cr" not in message
    assert isinstance(caught.value, ConnectionError)  # BrokerUnavailable is one
    # even when the driver's own message carries the url, the password is masked
    client = aioredis.Redis.from_url(f"redis://user:s3cr%40t@127.0.0.1:{port}/0")
    broker = RedisBroker(client, owns_client=True)
    try:
        for url in (f"redis://user:s3cr@t@127.0.0.1:{port}", f"redis://user:s3cr%40t@x:{port}"):
            mapped = broker._map_error(RedisConnectionError(f"Error connecting to {url}"))
            assert isinstance(mapped, BrokerUnavailable)
            assert "s3cr" not in str(mapped) and f"127.0.0.1:{port}" in str(mapped)
    finally:
        await broker.close()


async def test_a_server_error_is_a_broker_error_with_the_servers_message(
    broker: RedisBroker,
) -> None:
    await broker._client.set(f"{broker._p}queues", b"not a set")
    with pytest.raises(BrokerError, match="WRONGTYPE") as caught:
        await broker.stats()
    assert not isinstance(caught.value, BrokerUnavailable)


async def test_prefixes_isolate_stores_and_equal_prefixes_share_one(
    open_redis: OpenRedis,
) -> None:
    a, b = await open_redis(), await open_redis()
    a_again = await open_redis(a.prefix)
    job_id = await a.enqueue(Job("x"))
    assert await b.get(job_id) is None
    assert await b.claim(["default"], 10, lease=30.0, max_retries=3) == []
    [delivery] = await a_again.claim(["default"], 10, lease=30.0, max_retries=3)
    assert delivery.id == job_id


async def test_a_broker_on_a_given_client_leaves_the_client_open(
    redis_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        broker = RedisBroker(client, prefix=f"t{uuid.uuid4().hex}", retention=0)
        job_id = await broker.enqueue(Job("x"))
        assert (await claim_one(broker)).id == job_id
        await broker.close()
        await broker.close()  # idempotent
        assert await client.ping()
        with pytest.raises(BrokerClosed, match="closed"):
            await broker.enqueue(Job("x"))
    finally:
        await client.aclose()
    with pytest.raises(TypeError, match=r"redis\.asyncio\.Redis"):
        RedisBroker("redis://localhost")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# enqueue / claim / settle details
# ---------------------------------------------------------------------------------------
async def test_a_duplicate_id_is_refused_but_an_enqueue_retried_after_a_lost_reply_is_not(
    broker: RedisBroker,
) -> None:
    job = Job("x", {"n": 1})
    assert await broker.enqueue(job) == job.id
    with pytest.raises(ValueError, match="already stored"):
        await broker.enqueue(job)
    other = Job("x")
    with pytest.raises(ValueError, match="already stored"):
        await broker.enqueue_many([other, job])
    with pytest.raises(ValueError, match="same job id twice"):  # the front's check
        await broker.enqueue_many([other, other])
    assert await broker.get(other.id) is None
    # what enqueue does when its connection fails: it tries again, taking stored ids as its own
    packed = _pack([broker._new_job(other, encode_job(other), None, None)])
    enqueue = broker._scripts.enqueue
    assert await broker._run(enqueue, [packed, 0]) == f'["{other.id}"]'.encode()
    assert await broker._run(enqueue, [packed, 0]) == f'["{other.id}"]'.encode()
    assert (await broker.stats())["default"].queued == 2


async def test_payloads_come_back_byte_for_byte(broker: RedisBroker) -> None:
    # (payloads travel inside a JSON argument to the scripts: escapes must survive)
    args = {
        "text": 'é\u0000"\\/\n\t😀\u2028',
        "numbers": [1e20, 2**63 - 1, -0.0, 1.5e-300, 12345678901234567890],
        "nested": {"a": [{"b": None, "c": True}], "": "empty key"},
    }
    job = Job("x", args, headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})
    await broker.enqueue_many([job])
    [delivery] = await broker.claim(["default"], 1, lease=30.0, max_retries=3)
    assert delivery.job is not None
    assert delivery.job.args == args and delivery.job.headers == job.headers
    stored = await broker._client.hget(f"{broker._p}job:{job.id}", "payload")
    assert stored == encode_job(job)
    record = await broker.get(job.id)
    assert record is not None and record.args == args


async def test_enqueue_carries_the_current_trace_context(broker: RedisBroker) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        job_id = await broker.enqueue(Job("x"))
        trace_id = format(span.get_span_context().trace_id, "032x")
    [delivery] = await broker.claim(["default"], 1, lease=30.0, max_retries=3)
    assert delivery.id == job_id and delivery.job is not None
    assert trace_id in delivery.job.headers["traceparent"]


async def test_large_batches_claim_and_settle_in_one_call_each_in_order(
    broker: RedisBroker,
) -> None:
    jobs = [Job("x", {"i": i}) for i in range(2500)]
    assert await broker.enqueue_many(jobs) == [job.id for job in jobs]
    deliveries = await broker.claim(["default"], 2400, lease=30.0, max_retries=3)
    assert [d.id for d in deliveries] == [job.id for job in jobs[:2400]]
    assert all(d.attempt == 1 and d.job is not None for d in deliveries)
    outcomes = [Outcome(d, JobState.SUCCEEDED, Status.SUCCESS) for d in deliveries]
    assert await broker.settle(outcomes) == [True] * 2400
    # settling again (a call retried after its reply was lost) changes nothing
    assert await broker.settle(outcomes[:3]) == [True] * 3
    failed = [Outcome(d, JobState.FAILED, Status.INTERNAL_ERROR, "E: e", 1.0) for d in deliveries]
    assert await broker.settle(failed[:3]) == [False] * 3
    stats = (await broker.stats())["default"]
    assert (stats.queued, stats.running, stats.succeeded) == (100, 0, 2400)


async def test_a_claim_retried_after_a_lost_reply_returns_the_same_jobs(
    broker: RedisBroker,
) -> None:
    # (what claim() does when its connection fails: it retries with the same claim id)
    await broker.enqueue_many([Job("x", {"i": i}) for i in range(5)])
    args = ["claim-1", 3, 30_000, 3, *LEASE_EXPIRED, 1, "default"]
    first = await broker._run(broker._scripts.claim, args)
    again = await broker._run(broker._scripts.claim, args)
    assert again == first and first
    assert (await broker.stats())["default"].running == 3
    other = await broker.claim(["default"], 10, lease=30.0, max_retries=3)
    assert len(other) == 2


async def test_settle_keeps_per_outcome_fencing_within_one_batch(broker: RedisBroker) -> None:
    ids = await broker.enqueue_many([Job("x") for _ in range(3)])
    first = await broker.claim(["default"], 3, lease=30.0, max_retries=3)
    assert await broker.cancel(ids[1]) is True
    failed = Outcome(first[2], JobState.FAILED, Status.UNAVAILABLE, "Unavailable: later", 60.0)
    applied = await broker.settle(
        [
            Outcome(first[0], JobState.SUCCEEDED, Status.SUCCESS),
            Outcome(first[1], JobState.DEAD),
            failed,
        ]
    )
    assert applied == [True, False, True]
    record = await broker.get(ids[2])
    assert record is not None
    assert (record.state, record.status, record.error) == (
        JobState.FAILED,
        Status.UNAVAILABLE,
        "Unavailable: later",
    )
    assert record.run_at is not None


async def test_renew_reports_revoked_leases_but_not_ones_its_holder_settled(
    broker: RedisBroker,
) -> None:
    await broker.enqueue_many([Job("x"), Job("x")])
    done, expiring = await broker.claim(["default"], 2, lease=0.2, max_retries=3)
    assert await broker.settle([Outcome(done, JobState.SUCCEEDED, Status.SUCCESS)]) == [True]
    # the lease of `expiring` lapses, and a claim takes the job back (revoking the lease)
    again = await claim_one(broker, lease=30.0)
    assert again.id == expiring.id and again.token != expiring.token
    assert await broker.renew([done, expiring, again], lease=30.0) == {expiring.id: "lost"}


async def test_a_cancelled_running_job_reports_cancelled_even_without_retention(
    open_redis: OpenRedis,
) -> None:
    broker = await open_redis(retention=0)
    job_id = await broker.enqueue(Job("x"))
    delivery = await claim_one(broker, lease=30.0)
    assert await broker.cancel(job_id) is True
    # the record outlives the lease so the consumer learns why, then is cleaned up
    assert await broker.renew([delivery], lease=30.0) == {job_id: "cancelled"}
    assert (await broker.stats())["default"].running == 0


async def test_retention_cleanup_deletes_the_records(open_redis: OpenRedis) -> None:
    broker = await open_redis(retention=0.05)
    ids = await broker.enqueue_many([Job("x"), Job("x")])
    deliveries = await broker.claim(["default"], 2, lease=30.0, max_retries=3)
    outcomes = [Outcome(d, JobState.SUCCEEDED, Status.SUCCESS) for d in deliveries]
    assert await broker.settle(outcomes) == [True, True]
    assert await broker.get(ids[0]) is not None

    async def deleted() -> bool:
        # cleanup runs inside claim, at most every 2 s (the lock key's lifetime)
        await broker.claim(["default"], 1, lease=30.0, max_retries=3)
        return all([await broker.get(job_id) is None for job_id in ids])

    await until(deleted, 10.0, "records past retention deleted")
    # nothing succeeded is counted: the emptied queue's name went with its last record
    assert "default" not in await broker.stats()
    keys = await _keys(broker)
    assert not [k for k in keys if ":job:" in k or ":succeeded:" in k]


async def test_a_record_whose_payload_is_not_a_job_still_has_a_record(
    broker: RedisBroker,
) -> None:
    job_id = await broker.enqueue(Job("x", {"a": 1}))
    await broker._client.hset(f"{broker._p}job:{job_id}", "payload", b"\xff{oops")
    record = await broker.get(job_id)
    assert record is not None and (record.handler, record.args) == ("x", {})
    [delivery] = await broker.claim(["default"], 5, lease=30.0, max_retries=3)
    assert (delivery.id, delivery.job, delivery.attempt) == (job_id, None, 1)
    assert delivery.error and "undecodable" in delivery.error
    assert delivery.error.startswith("DecodeError: ")


# ---------------------------------------------------------------------------------------
# waiting
# ---------------------------------------------------------------------------------------
async def test_wait_wakes_on_work_from_another_connection(open_redis: OpenRedis) -> None:
    consumer = await open_redis()
    producer = await open_redis(consumer.prefix)
    assert await consumer.claim(["q"], 10, lease=30.0, max_retries=3) == []
    waiting = asyncio.create_task(consumer.wait_for_work(["q"], 30.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await producer.enqueue(Job("x", queue="other"))  # not a queue it waits on
    await asyncio.sleep(0.05)
    assert not waiting.done()
    t0 = time.monotonic()
    await producer.enqueue(Job("x", queue="q"))
    await asyncio.wait_for(waiting, 5.0)
    assert time.monotonic() - t0 < 1.0
    # work that is already there: wait returns at once
    await asyncio.wait_for(consumer.wait_for_work(["q"], 30.0), 1.0)


async def test_wait_sleeps_until_the_next_due_time(broker: RedisBroker) -> None:
    await broker.claim(["default"], 1, lease=30.0, max_retries=3)
    await broker.enqueue(Job("x"), delay=0.3)
    t0 = time.monotonic()
    while not await broker.claim(["default"], 1, lease=30.0, max_retries=3):
        await broker.wait_for_work(["default"], 30.0)
    took = time.monotonic() - t0
    assert 0.25 <= took < 5.0
    # nothing due at all: the timeout bounds the wait
    await broker.claim(["empty"], 1, lease=30.0, max_retries=3)
    await broker.wait_for_work(["empty"], 0)  # takes our own claim's wake-up
    t0 = time.monotonic()
    await broker.wait_for_work(["empty"], 0.1)
    assert 0.08 <= time.monotonic() - t0 < 2.0


async def test_wait_and_claim_validate_arguments(broker: RedisBroker) -> None:
    with pytest.raises(TypeError, match="queues"):
        await broker.wait_for_work("default", 1.0)
    with pytest.raises(ValueError, match="queues"):
        await broker.claim([], 1, lease=30.0, max_retries=3)
    with pytest.raises(ValueError, match="lease"):
        await broker.claim(["default"], 1, lease=0, max_retries=3)
    with pytest.raises(ValueError, match="limit"):
        await broker.claim(["default"], -1, lease=1.0, max_retries=3)
    assert await broker.claim(["default"], 0, lease=1.0, max_retries=3) == []
    await broker.enqueue(Job("x"))
    [leased] = await broker.claim(["default"], 1, lease=30.0, max_retries=3)
    with pytest.raises(ValueError, match="state"):
        await broker.settle([Outcome(leased, JobState.RUNNING)])
    with pytest.raises(TypeError, match="Job"):
        await broker.enqueue("x")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# results, progress and broker.wait (contract §10)
# ---------------------------------------------------------------------------------------
async def _listeners(broker: RedisBroker) -> int:
    """How many connections listen on the done channel (the scripts publish only then)."""
    [(_, n)] = await broker._client.pubsub_numsub(f"{broker._p}done")
    return int(n)


async def _waiting_on_done(broker: RedisBroker) -> None:
    """Until `broker` listens on the done channel, and its waiter sleeps on the event."""

    async def listening() -> bool:
        return await _listeners(broker) == 1

    await until(listening, 10.0, "the done-channel subscription")
    await asyncio.sleep(0.3)  # wait() looked again, and sleeps on the notification now


async def test_wait_is_woken_by_the_done_notification_well_before_its_next_look(
    open_redis: OpenRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_broker, "_DONE_LINGER", 0.2)
    producer = await open_redis()
    consumer = await open_redis(producer.prefix)
    ids = await producer.enqueue_many([Job("x") for _ in range(3)])
    deliveries = {d.id: d for d in await consumer.claim(["default"], 3, lease=30, max_retries=3)}
    assert await _listeners(producer) == 0  # nobody waits: nothing is published

    async def succeed(job_id: str) -> None:
        outcome = Outcome(deliveries[job_id], JobState.SUCCEEDED, Status.SUCCESS, result=b"[1]")
        assert await consumer.settle([outcome]) == [True]

    async def die(job_id: str) -> None:
        outcome = Outcome(deliveries[job_id], JobState.DEAD, Status.BAD_REQUEST, "E: e")
        assert await consumer.settle([outcome]) == [True]

    async def cancel(job_id: str) -> None:
        assert await consumer.cancel(job_id) is True

    finishes = [succeed, die, cancel]
    states = [JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED]
    for job_id, finish, state in zip(ids, finishes, states, strict=True):
        waiting = asyncio.create_task(producer.wait(job_id, timeout=30))
        await _waiting_on_done(producer)
        assert not waiting.done()
        t0 = time.monotonic()
        await finish(job_id)
        record = await asyncio.wait_for(waiting, 5.0)
        # the wait sleeps in 1 s slices: without the notification it would take ~0.7 s
        assert time.monotonic() - t0 < 0.3
        assert record.state is state
    succeeded = await producer.get(ids[0])
    assert succeeded is not None and succeeded.result == [1]

    async def unsubscribed() -> bool:
        return await _listeners(producer) == 0

    # the subscription ends a while after the last waiter (the scripts publish no more)
    await until(unsubscribed, 5.0, "the done channel dropped")
    assert producer._waker._waiters == {}


async def test_many_waiters_share_one_subscription(open_redis: OpenRedis) -> None:
    producer = await open_redis()
    consumer = await open_redis(producer.prefix)
    ids = await producer.enqueue_many([Job("x") for _ in range(20)])
    waits = [asyncio.create_task(producer.wait(job_id, timeout=30)) for job_id in ids]
    await _waiting_on_done(producer)
    deliveries = await consumer.claim(["default"], 20, lease=30, max_retries=3)
    t0 = time.monotonic()
    outcomes = [Outcome(d, JobState.SUCCEEDED, Status.SUCCESS) for d in deliveries]
    assert await consumer.settle(outcomes) == [True] * 20
    records = await asyncio.wait_for(asyncio.gather(*waits), 5.0)
    assert time.monotonic() - t0 < 0.5
    assert [r.id for r in records] == ids and await _listeners(producer) == 1


async def test_progress_is_stored_with_held_leases_only_and_results_at_settle(
    broker: RedisBroker,
) -> None:
    first, second = await broker.enqueue_many([Job("x"), Job("x")])
    a, b = await broker.claim(["default"], 2, lease=30.0, max_retries=3)
    now = datetime.now(UTC)
    stale = Delivery(b.id, "999", 1, None)
    reports = {a.id: Progress(1, 4, "one", now), b.id: Progress(2, 4, "two", now)}
    assert await broker.renew([a, stale], lease=30.0, progress=reports) == {b.id: "lost"}
    got_a, got_b = await broker.get(first), await broker.get(second)
    assert got_a is not None and got_a.progress == reports[a.id]
    assert got_b is not None and got_b.progress is None  # not stored: the lease is not held
    # a job settled without result or progress has neither field (old records alike)
    assert await broker.settle([Outcome(b, JobState.SUCCEEDED, Status.SUCCESS)]) == [True]
    fields = await broker._client.hkeys(f"{broker._p}job:{second}")
    assert b"result" not in fields and b"progress" not in fields
    got_b = await broker.get(second)
    assert got_b is not None and (got_b.result, got_b.progress) == (None, None)
    # the result is stored byte for byte; the progress of renew stays unless settle has one
    raw = b'{"big": 12345678901234567890, "f": 0.1}'
    assert await broker.settle([Outcome(a, JobState.SUCCEEDED, result=raw)]) == [True]
    assert await broker._client.hget(f"{broker._p}job:{first}", "result") == raw
    got_a = await broker.get(first)
    assert got_a is not None and got_a.progress == reports[a.id]
    assert got_a.result == {"big": 12345678901234567890, "f": 0.1}


async def test_settle_stores_progress_in_every_state(broker: RedisBroker) -> None:
    ids = await broker.enqueue_many([Job("x") for _ in range(3)])
    deliveries = await broker.claim(["default"], 3, lease=30.0, max_retries=3)
    encoded = [f'{{"current": {i}, "updated_at": 1.0}}'.encode() for i in range(3)]
    outcomes = [
        Outcome(deliveries[0], JobState.FAILED, Status.UNAVAILABLE, "E: e", 60.0),
        Outcome(deliveries[1], JobState.QUEUED),
        Outcome(deliveries[2], JobState.DEAD, Status.BAD_REQUEST, "E: e", result=None),
    ]
    for outcome, report in zip(outcomes, encoded, strict=True):
        outcome.progress = report
    assert await broker.settle(outcomes) == [True] * 3
    for i, job_id in enumerate(ids):
        record = await broker.get(job_id)
        assert record is not None and record.progress is not None
        assert record.progress.current == i


async def test_a_waiter_survives_a_redis_restart(
    open_redis: OpenRedis, redis_server: RedisServer
) -> None:
    producer = await open_redis()
    consumer = await open_redis(producer.prefix)
    job_id = await producer.enqueue(Job("x"))
    waiting = asyncio.create_task(producer.wait(job_id, timeout=60))
    await _waiting_on_done(producer)
    await asyncio.to_thread(redis_server.restart)
    # it subscribes again, to both channels, by itself
    await _waiting_on_done(producer)
    delivery = await claim_one(consumer)
    t0 = time.monotonic()
    assert await consumer.settle([Outcome(delivery, JobState.SUCCEEDED)]) == [True]
    record = await asyncio.wait_for(waiting, 5.0)
    assert time.monotonic() - t0 < 0.3 and record.state is JobState.SUCCEEDED


# ---------------------------------------------------------------------------------------
# a restart of the server
# ---------------------------------------------------------------------------------------
async def test_a_redis_restart_while_consuming_loses_nothing(
    open_redis: OpenRedis, redis_server: RedisServer
) -> None:
    consumer_broker = await open_redis()
    producer = await open_redis(consumer_broker.prefix)
    ran: list[str] = []
    worker = Worker()

    @worker.handler("record")
    async def record(job: Job) -> None:
        await asyncio.sleep(0.001)
        ran.append(job.id)

    before = [Job("record") for _ in range(300)]
    scheduled = Job("record")
    await producer.enqueue_many(before)
    await producer.enqueue(scheduled, delay=1.0)
    async with consuming(worker, consumer_broker, concurrency=10):
        await until(lambda: _at_least(ran, 50), 20.0, "some jobs run")
        # When the server restarts (a clean shutdown: the append-only file is complete)
        await asyncio.to_thread(redis_server.restart)
        # Then both connections come back by themselves and nothing is lost
        after = [Job("record") for _ in range(100)]
        await producer.enqueue_many(after)
        for job in [*before, scheduled, *after]:
            await record_in(producer, job.id, [JobState.SUCCEEDED], timeout=30.0)
        # and wake-ups work again: an idle consumer starts new work at once
        t0 = time.monotonic()
        last = await producer.enqueue(Job("record"))
        await until(lambda: _contains(ran, last), 10.0, "a job after the restart")
        assert time.monotonic() - t0 < 1.0
    assert set(ran) >= {job.id for job in [*before, scheduled, *after]}
    stats = (await producer.stats())["default"]
    assert (stats.succeeded, stats.queued, stats.running, stats.dead) == (402, 0, 0, 0)


async def _at_least(items: list[str], n: int) -> bool:
    return len(items) >= n


async def _contains(items: list[str], item: str) -> bool:
    return item in items


async def test_a_producer_reconnects_after_a_restart(
    open_redis: OpenRedis, redis_server: RedisServer
) -> None:
    broker = await open_redis()
    job_id = await broker.enqueue(Job("x", {"kept": True}))
    await asyncio.to_thread(redis_server.restart)
    record = await broker.get(job_id)  # the pooled connection was closed: a new one is made
    assert record is not None and record.args == {"kept": True}
    assert (await claim_one(broker)).id == job_id


# ---------------------------------------------------------------------------------------
# bad records written straight into storage (issue 11)
# ---------------------------------------------------------------------------------------
async def _run_around_bad_record(
    broker: RedisBroker, valid: list[str], bad: str, problem: str, *, by_id: bool = True
) -> None:
    """Consume: every valid job succeeds, none is stuck; the bad record is dead with
    BAD_REQUEST and an error naming `problem`; every read still works."""
    worker = Worker()
    worker.register("x", lambda job: None)
    async with consuming(worker, broker):
        for job_id in valid:
            assert (await record_in(broker, job_id)).state is JobState.SUCCEEDED
        await until(lambda: _dead_count(broker, 1), what="bad record dead")
    (dead,) = await broker.dead_letters()
    assert (dead.id, dead.state, dead.status) == (bad, JobState.DEAD, Status.BAD_REQUEST)
    assert dead.error is not None and problem in dead.error, dead.error
    if by_id:
        record = await broker.get(bad)
        assert record is not None and record.status is Status.BAD_REQUEST
    stats = (await broker.stats())["default"]
    assert (stats.queued, stats.running, stats.failed, stats.scheduled) == (0, 0, 0, 0)
    assert (stats.succeeded, stats.dead) == (len(valid), 1)


async def _dead_count(broker: RedisBroker, n: int) -> bool:
    return len(await broker.dead_letters()) >= n


@pytest.mark.parametrize(("field", "value"), [("attempts", "abc"), ("lease", "xyz")])
async def test_a_job_with_a_mistyped_counter_is_dead_and_its_batch_runs(
    broker: RedisBroker, field: str, value: str
) -> None:
    ids = await broker.enqueue_many([Job("x") for _ in range(52)])
    bad = ids[20]
    await broker._client.hset(f"{broker._p}job:{bad}", field, value)
    await _run_around_bad_record(broker, [i for i in ids if i != bad], bad, f"'{field}'")


async def test_a_job_without_its_queue_is_dead_and_its_batch_runs(broker: RedisBroker) -> None:
    ids = await broker.enqueue_many([Job("x") for _ in range(100)])
    bad = ids[50]
    await broker._client.hdel(f"{broker._p}job:{bad}", "queue")
    await _run_around_bad_record(broker, [i for i in ids if i != bad], bad, "no queue")


async def test_a_running_job_that_loses_its_queue_wedges_no_settle_or_renew(
    broker: RedisBroker,
) -> None:
    ids = await broker.enqueue_many([Job("x") for _ in range(5)])
    deliveries = await broker.claim(["default"], 5, lease=0.3, max_retries=3)
    await broker._client.hdel(f"{broker._p}job:{ids[2]}", "queue")
    assert await broker.renew(deliveries, lease=0.3) == {ids[2]: "lost"}
    outcomes = [Outcome(d, JobState.SUCCEEDED, Status.SUCCESS) for d in deliveries]
    assert await broker.settle(outcomes) == [True, True, False, True, True]
    record = await broker.get(ids[2])
    assert record is not None and record.state is JobState.RUNNING

    # its lease expires; the claim that takes it back (it knows the queue) settles it dead
    async def died() -> bool:
        assert await broker.claim(["default"], 5, lease=30.0, max_retries=3) == []
        return await _dead_count(broker, 1)

    await until(died, what="queue-less record dead")
    (dead,) = await broker.dead_letters()
    assert (dead.id, dead.status) == (ids[2], Status.BAD_REQUEST)
    assert dead.error is not None and "no queue" in dead.error
    stats = (await broker.stats())["default"]
    assert (stats.running, stats.succeeded, stats.dead) == (0, 4, 1)


async def test_a_job_id_that_is_not_utf8_is_dead_and_its_batch_runs(broker: RedisBroker) -> None:
    ids = await broker.enqueue_many([Job("x") for _ in range(50)])
    # a copy of a valid record under an id that is not UTF-8, in the middle of the queue
    client, p = broker._client, broker._p.encode()
    stored = await client.hgetall(f"{broker._p}job:{ids[25]}")
    fields = [part for pair in stored.items() for part in pair]
    bad = b"bad\xff\xfeid"
    await client.hset(p + b"job:" + bad, items=fields)
    seq = await client.zscore(f"{broker._p}ready:default", ids[25])
    assert seq is not None
    await client.zadd(f"{broker._p}ready:default", {bad: seq})
    shown = bad.decode(errors="backslashreplace")
    # (reads show it escaped: get() by that text finds nothing)
    await _run_around_bad_record(broker, ids, shown, "not valid UTF-8", by_id=False)
    assert await broker.get(shown) is None


async def test_a_record_without_a_state_is_reported_not_fatal(broker: RedisBroker) -> None:
    ids = await broker.enqueue_many([Job("x") for _ in range(3)])
    key = f"{broker._p}job:{ids[1]}"
    await broker._client.hdel(key, "state")
    await broker._client.hset(key, mapping={"enq": "soon", "attempts": "many", "status": "x"})
    record = await broker.get(ids[1])
    assert record is not None and record.state == "" and record.status is None
    assert record.error is not None and "no state" in record.error
    assert "attempts" in record.error and "enq" in record.error
    assert (await broker.stats())["default"].queued == 3
    assert await broker.dead_letters() == []


async def _calls(broker: RedisBroker) -> int:
    """The number of commands the server has run (scripts' own calls included)."""
    info = await broker._client.info("commandstats")
    return sum(int(stat["calls"]) for stat in info.values())


async def test_emptied_queues_leave_the_queue_set_and_claims_stay_cheap(
    open_redis: OpenRedis,
) -> None:
    n = 20_000
    broker = await open_redis(retention=0)
    queues = [f"q{i}" for i in range(n)]
    for start in range(0, n, 2000):
        await broker.enqueue_many([Job("x", queue=q) for q in queues[start : start + 2000]])
    assert await broker._client.scard(f"{broker._p}queues") == n
    for start in range(0, n, 500):
        batch = await broker.claim(queues[start : start + 500], 500, lease=30.0, max_retries=3)
        outcomes = [Outcome(d, JobState.SUCCEEDED, Status.SUCCESS) for d in batch]
        assert await broker.settle(outcomes) == [True] * len(batch) == [True] * 500
    # every queue is empty (no retention): its name is gone
    assert await broker._client.scard(f"{broker._p}queues") == 0
    assert await broker.stats() == {}
    # an old store's names of long-empty queues: a claim that runs the clean-up touches a
    # bounded number of them (it drops them a slice at a time), and stats() follows
    await broker._client.sadd(f"{broker._p}queues", *queues)
    for _ in range(3):
        await broker._client.delete(f"{broker._p}cleanup")
        before = await _calls(broker)
        t0 = time.perf_counter()
        await broker.claim(["default"], 10, lease=30.0, max_retries=3)
        elapsed = time.perf_counter() - t0
        calls = await _calls(broker) - before
        assert calls < 2_000, calls
        assert elapsed < 0.5, elapsed
    left = await broker._client.scard(f"{broker._p}queues")
    assert n - 3_000 <= left < n


async def test_queues_holding_only_kept_or_dead_records_stay_in_stats(
    open_redis: OpenRedis,
) -> None:
    broker = await open_redis(retention=0.3)
    _, gone, _ = await broker.enqueue_many(
        [Job("x", queue="kept"), Job("x", queue="gone"), Job("x", queue="dead")]
    )
    (delivery,) = await broker.claim(["kept"], 1, lease=30.0, max_retries=3)
    assert await broker.settle([Outcome(delivery, JobState.SUCCEEDED, Status.SUCCESS)]) == [True]
    assert await broker.cancel(gone) is True
    (delivery,) = await broker.claim(["dead"], 1, lease=30.0, max_retries=3)
    await broker.settle([Outcome(delivery, JobState.DEAD, Status.BAD_REQUEST, "E: e")])
    stats = await broker.stats()
    assert set(stats) == {"kept", "gone", "dead"}
    assert (stats["kept"].succeeded, stats["gone"].cancelled, stats["dead"].dead) == (1, 1, 1)

    async def cleaned() -> bool:
        await broker.claim(["default"], 1, lease=30.0, max_retries=3)
        return set(await broker.stats()) == {"dead"}

    # past retention the clean-up deletes the kept records, and their queues' names
    await until(cleaned, 10.0, "kept records and their queue names cleaned up")
    assert await broker._client.smembers(f"{broker._p}queues") == {b"dead"}
    assert await broker.purge_dead() == 1
    assert await broker._client.scard(f"{broker._p}queues") == 0
    assert await broker.stats() == {}
