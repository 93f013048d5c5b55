"""The behaviour every broker shares (contract §7), run against each backend.

Every test taking `broker` (or `open_broker`) runs once per backend of conftest.BACKENDS.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import pywork
from pywork import (
    BadRequest,
    Forbidden,
    InternalError,
    Job,
    JobState,
    NoResponse,
    QueueStats,
    SerializationError,
    Status,
    TooManyRequests,
    Worker,
)
from pywork.brokers import Broker, Delivery, Outcome
from pywork.brokers.memory import MemoryBroker
from pywork.consumer import adaptive_prefetch, outcome_for, prefetch_for, retry_delay
from pywork.types import Handler
from tests.brokers.support import FAST, claim_one, consuming, record_in, record_where, until

_static_check: Broker = MemoryBroker()


def aware_now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------
# a stored message that cannot be decoded: one branch per backend
# ---------------------------------------------------------------------------------------
GARBAGE = b"\x00{not a job"


async def corrupt(broker: Broker, backend: str, job_id: str, payload: bytes = GARBAGE) -> None:
    """Overwrite the stored message of `job_id` with `payload` (bytes that are not a job)."""
    if backend == "memory":
        assert isinstance(broker, MemoryBroker)
        broker._memory.jobs[job_id].payload = payload
    elif backend == "sqlite":
        path = urlsplit(broker.url).path[1:]
        with sqlite3.connect(path) as db:
            db.execute("UPDATE pywork_jobs SET payload = ? WHERE id = ?", (payload, job_id))
        db.close()
    elif backend == "redis":  # a hash per job: {prefix}:job:<id>
        key = f"{broker._p}job:{job_id}"  # type: ignore[attr-defined]
        await broker._client.hset(key, "payload", payload)  # type: ignore[attr-defined]
    elif backend == "postgres":
        async with broker._pool.acquire() as conn:  # type: ignore[attr-defined]
            await conn.execute(
                f"UPDATE {broker._schema}.jobs SET payload = $1 WHERE id = $2",  # type: ignore[attr-defined]
                payload,
                job_id,
            )
    else:
        raise AssertionError(backend)


# ---------------------------------------------------------------------------------------
# producer side
# ---------------------------------------------------------------------------------------
async def test_backend_implements_the_protocol(broker: Broker) -> None:
    assert isinstance(broker, Broker)
    assert broker.retention == 3600.0


async def test_enqueue_returns_the_id_and_get_shows_a_queued_record(broker: Broker) -> None:
    # Given a job, When it is enqueued
    before = aware_now()
    job = Job("email.send", {"to": "a@b.c", "n": [1, 2.5, None, True]}, queue="mail")
    job_id = await broker.enqueue(job)
    after = aware_now()

    # Then its record says queued, with nothing run yet
    assert job_id == job.id
    record = await broker.get(job_id)
    assert record is not None
    assert (record.id, record.handler, record.queue) == (job.id, "email.send", "mail")
    assert record.args == {"to": "a@b.c", "n": [1, 2.5, None, True]}
    assert record.state is JobState.QUEUED and str(record.state) == "queued"  # a StrEnum
    assert (record.status, record.error, record.attempts) == (None, None, 0)
    assert record.enqueued_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= record.enqueued_at <= after + timedelta(seconds=1)
    assert record.started_at is None and record.finished_at is None
    assert await broker.get("0" * 32) is None


async def test_enqueue_refuses_args_it_cannot_encode_and_stores_nothing(broker: Broker) -> None:
    job = Job("x", {"user": {"created": datetime.now()}})
    with pytest.raises(SerializationError, match=r"args\['user'\]\['created'\]"):
        await broker.enqueue(job)
    assert await broker.get(job.id) is None
    assert sum(s.queued for s in (await broker.stats()).values()) == 0


async def test_enqueue_many_is_all_or_nothing(broker: Broker) -> None:
    # Given a batch whose third job cannot be encoded
    good = [Job("x", {"i": i}) for i in range(5)]
    bad = Job("x", {"items": [1, {"when": {1, 2}}]})
    with pytest.raises(SerializationError, match=r"args\['items'\]\[1\]\['when'\]"):
        await broker.enqueue_many([*good[:2], bad, *good[2:]])
    # Then nothing of it was stored
    for job in [*good, bad]:
        assert await broker.get(job.id) is None

    # And a good batch is stored whole, in order
    ids = await broker.enqueue_many(good)
    assert ids == [job.id for job in good]
    assert (await broker.stats())["default"].queued == 5
    assert await broker.enqueue_many([]) == []


async def test_enqueue_validates_at_and_delay(broker: Broker) -> None:
    with pytest.raises(ValueError, match="at"):
        await broker.enqueue(Job("x"), at=aware_now(), delay=1.0)
    with pytest.raises(ValueError, match="delay"):
        await broker.enqueue(Job("x"), delay=-1.0)
    assert (await broker.stats()).get("default", QueueStats()).queued == 0


async def test_scheduled_jobs_wait_for_their_time(broker: Broker) -> None:
    # naive `at` is local time, like perform_at
    local_at = datetime.now() + timedelta(seconds=60)
    scheduled = await broker.enqueue(Job("x"), at=local_at)
    delayed = await broker.enqueue(Job("x"), delay=timedelta(seconds=60))
    past = await broker.enqueue(Job("x"), at=aware_now() - timedelta(hours=1))

    record = await broker.get(scheduled)
    assert record is not None and record.state == JobState.SCHEDULED
    assert record.run_at is not None
    assert abs(record.run_at.timestamp() - local_at.timestamp()) < 0.01
    record = await broker.get(delayed)
    assert record is not None and record.state == JobState.SCHEDULED
    record = await broker.get(past)
    assert record is not None and record.state == JobState.QUEUED
    stats = (await broker.stats())["default"]
    assert (stats.queued, stats.scheduled) == (1, 2)
    # only the past one can be claimed now
    claimed = await broker.claim(["default"], 10, lease=30.0, max_retries=3)
    assert [d.id for d in claimed] == [past]


async def test_unique_keys_while_a_job_is_active(broker: Broker) -> None:
    # Given a queued job with a key and a scheduled one with another key
    first = await broker.enqueue(Job("x", key="report:1"))
    later = await broker.enqueue(Job("x", key="report:2"), delay=60)
    # When jobs with the same keys are enqueued, Then nothing is added
    again = Job("x", key="report:1")
    assert await broker.enqueue(again) == first
    assert await broker.get(again.id) is None
    assert await broker.enqueue(Job("x", key="report:2")) == later
    batch = [Job("x", key="report:3"), Job("x", key="report:3"), Job("x", key="report:1")]
    ids = await broker.enqueue_many(batch)
    assert ids == [batch[0].id, batch[0].id, first]
    assert (await broker.stats())["default"].queued == 2

    # And once the job finished, its key is free again
    worker = Worker()
    worker.register("x", lambda job: None)
    async with consuming(worker, broker):
        await record_in(broker, first)
        await record_in(broker, batch[0].id)
    fresh = Job("x", key="report:1")
    assert await broker.enqueue(fresh) == fresh.id


async def test_cancel_queued_scheduled_and_failed_jobs(broker: Broker) -> None:
    queued = await broker.enqueue(Job("x"))
    scheduled = await broker.enqueue(Job("x"), delay=60)
    assert await broker.cancel(queued) is True
    assert await broker.cancel(scheduled) is True
    assert await broker.cancel(queued) is False  # already cancelled
    assert await broker.cancel("f" * 32) is False  # unknown
    record = await broker.get(queued)
    assert record is not None and record.state == JobState.CANCELLED
    assert record.finished_at is not None
    assert await broker.claim(["default"], 10, lease=30.0, max_retries=3) == []
    stats = (await broker.stats())["default"]
    assert (stats.queued, stats.scheduled, stats.cancelled) == (0, 0, 2)

    # a failed job waiting for its retry can be cancelled too
    failing = await broker.enqueue(Job("x"))
    delivery = await claim_one(broker)
    outcome = Outcome(delivery, JobState.FAILED, Status.INTERNAL_ERROR, "E: x", retry_in=60.0)
    assert await broker.settle([outcome]) == [True]
    assert await broker.cancel(failing) is True
    # a succeeded job cannot be
    done = await broker.enqueue(Job("x"))
    delivery = await claim_one(broker)
    assert await broker.settle([Outcome(delivery, JobState.SUCCEEDED, Status.SUCCESS)]) == [True]
    assert await broker.cancel(done) is False


async def test_stats_per_queue(broker: Broker) -> None:
    await broker.enqueue_many([Job("x", queue="a") for _ in range(3)])
    await broker.enqueue(Job("x", queue="b"), delay=60)
    running = await claim_one(broker, ["a"])
    dead = await claim_one(broker, ["a"])
    outcome = Outcome(dead, JobState.DEAD, Status.BAD_REQUEST, "BadRequest: no")
    assert await broker.settle([outcome]) == [True]

    stats = await broker.stats()
    assert stats["a"] == QueueStats(queued=1, running=1, dead=1)
    assert stats["b"] == QueueStats(scheduled=1)
    assert "c" not in stats
    record = await broker.get(running.id)
    assert record is not None and record.state == JobState.RUNNING and record.attempts == 1


async def test_retention_zero_keeps_no_finished_records(
    open_broker: Callable[..., Any], new_url: Callable[[], str]
) -> None:
    broker = await open_broker(new_url(), retention=0)
    assert broker.retention == 0
    done = await broker.enqueue(Job("x"))
    cancelled = await broker.enqueue(Job("x"))
    failing = await broker.enqueue(Job("bad"))
    assert await broker.cancel(cancelled) is True
    worker = Worker()
    worker.register("x", lambda job: None)

    @worker.handler("bad")
    async def bad(job: Job) -> None:
        raise BadRequest("no")

    async with consuming(worker, broker):
        await record_in(broker, failing, [JobState.DEAD])
        await until(lambda: _gone(broker, done), what="succeeded record deleted")
    assert await broker.get(cancelled) is None
    stats = (await broker.stats()).get("default", QueueStats())
    assert (stats.succeeded, stats.cancelled, stats.dead) == (0, 0, 1)


async def _gone(broker: Broker, job_id: str) -> bool:
    return await broker.get(job_id) is None


async def test_retention_keeps_finished_records(broker: Broker) -> None:
    done = await broker.enqueue(Job("x", {"a": 1}))
    worker = Worker()
    worker.register("x", lambda job: None)
    async with consuming(worker, broker):
        record = await record_in(broker, done)
    assert record.state == JobState.SUCCEEDED
    assert (record.status, record.error, record.attempts) == (Status.SUCCESS, None, 1)
    assert record.args == {"a": 1}
    assert record.started_at is not None and record.finished_at is not None
    assert record.enqueued_at <= record.started_at <= record.finished_at
    assert (await broker.stats())["default"].succeeded == 1


async def test_dead_letters_retry_and_purge(broker: Broker) -> None:
    # Given three jobs that die at once (400), in two queues
    jobs = [Job("bad", {"n": 1}, queue="a"), Job("bad", {"n": 2}, queue="b")]
    jobs.append(Job("bad", {"n": 3}, queue="a"))
    worker = Worker()
    calls: list[int] = []

    @worker.handler("bad")
    async def bad(job: Job) -> None:
        calls.append(job.args["n"])
        if len(calls) <= 3:
            raise BadRequest(f"bad input {job.args['n']}")

    async with consuming(worker, broker, queues=("a", "b"), concurrency=1):
        for job in jobs:
            await broker.enqueue(job)
            await record_in(broker, job.id, [JobState.DEAD])

        # Then they are listed oldest first, filtered by queue and limited
        dead = await broker.dead_letters()
        assert [r.id for r in dead] == [j.id for j in jobs]
        assert dead[0].error == "BadRequest: bad input 1"
        assert dead[0].status == Status.BAD_REQUEST and dead[0].attempts == 1
        assert [r.id for r in await broker.dead_letters("a")] == [jobs[0].id, jobs[2].id]
        assert [r.id for r in await broker.dead_letters(limit=1)] == [jobs[0].id]

        # When one is retried, it runs again from attempt 1
        assert await broker.retry_dead(jobs[0].id) is True
        assert await broker.retry_dead(jobs[0].id) is False  # no longer dead
        record = await record_in(broker, jobs[0].id, [JobState.SUCCEEDED])
        assert record.attempts == 1
    # And purging empties the dead letters per queue
    assert await broker.purge_dead("b") == 1
    assert [r.id for r in await broker.dead_letters()] == [jobs[2].id]
    assert await broker.purge_dead() == 1
    assert await broker.dead_letters() == []
    assert await broker.get(jobs[2].id) is None


# ---------------------------------------------------------------------------------------
# consuming
# ---------------------------------------------------------------------------------------
async def test_consume_runs_jobs_with_middleware_and_the_delivered_job_intact(
    broker: Broker,
) -> None:
    # Given a job using every field
    job = Job(
        "echo",
        {"x": [1, {"y": "z"}]},
        queue="q1",
        timeout=5.0,
        key="k",
        max_retries=2,
        headers={"traceparent": "00-abc-def-01"},
    )
    seen: list[Job] = []
    statuses: list[tuple[Status, int]] = []

    def middleware(next_: Handler) -> Handler:
        async def run(job: Job) -> None:
            await next_(job)
            assert job.ctx is not None
            statuses.append((job.ctx.status, job.ctx.attempt))

        return run

    worker = Worker(middleware=[middleware])

    @worker.handler("echo")
    async def echo(job: Job) -> None:
        seen.append(job)

    await broker.enqueue(job)
    async with consuming(worker, broker, queues=["q1"]) as task:
        assert worker.running
        await record_in(broker, job.id)
    assert task.done() and task.exception() is None
    # Then the handler saw the job as enqueued
    [got] = seen
    assert (got.id, got.handler, got.args, got.queue) == (job.id, "echo", job.args, "q1")
    assert (got.timeout, got.key, got.max_retries) == (5.0, "k", 2)
    assert got.headers["traceparent"] == "00-abc-def-01"
    assert statuses == [(Status.SUCCESS, 1)]


async def test_no_response_counts_as_success(broker: Broker) -> None:
    worker = Worker()

    @worker.handler("idle")
    async def idle(job: Job) -> None:
        raise NoResponse("nothing to do")

    job_id = await broker.enqueue(Job("idle"))
    async with consuming(worker, broker):
        record = await record_in(broker, job_id)
    assert (record.state, record.status) == (JobState.SUCCEEDED, Status.NO_RESPONSE)


async def test_retries_until_success_counting_attempts(broker: Broker) -> None:
    attempts: list[int] = []
    worker = Worker()

    @worker.handler("flaky")
    def flaky(job: Job) -> None:  # a plain handler, run in a thread
        assert job.ctx is not None
        attempts.append(job.ctx.attempt)
        if len(attempts) < 3:
            raise InternalError("try again")

    job_id = await broker.enqueue(Job("flaky"))
    async with consuming(worker, broker):
        record = await record_in(broker, job_id)
    assert attempts == [1, 2, 3]
    assert (record.state, record.status, record.attempts) == (
        JobState.SUCCEEDED,
        Status.SUCCESS,
        3,
    )


async def test_max_retries_then_dead_and_job_override(broker: Broker) -> None:
    worker = Worker()
    runs: dict[str, int] = {}

    @worker.handler("boom")
    async def boom(job: Job) -> None:
        runs[job.id] = runs.get(job.id, 0) + 1
        raise RuntimeError("boom")

    default = await broker.enqueue(Job("boom"))
    once = await broker.enqueue(Job("boom", max_retries=0))
    async with consuming(worker, broker, max_retries=2):
        dead = await record_in(broker, default)
        dead_once = await record_in(broker, once)
    assert (dead.state, dead.status, dead.attempts) == (JobState.DEAD, Status.INTERNAL_ERROR, 3)
    assert dead.error == "RuntimeError: boom"
    assert dead.finished_at is not None
    assert (dead_once.state, dead_once.attempts) == (JobState.DEAD, 1)
    assert runs == {default: 3, once: 1}


async def test_other_4xx_die_at_once(broker: Broker) -> None:
    worker = Worker()

    @worker.handler("forbidden")
    async def forbidden(job: Job) -> None:
        raise Forbidden("not yours")

    @worker.handler("status")
    async def status(job: Job) -> None:
        assert job.ctx is not None
        job.ctx.status = Status.UNAUTHORIZED  # set without raising: no error text

    a = await broker.enqueue(Job("forbidden"))
    b = await broker.enqueue(Job("status"))
    async with consuming(worker, broker, max_retries=5):
        first = await record_in(broker, a)
        second = await record_in(broker, b)
    assert (first.state, first.status, first.attempts) == (JobState.DEAD, Status.FORBIDDEN, 1)
    assert first.error == "Forbidden: not yours"
    assert (second.state, second.status, second.error) == (
        JobState.DEAD,
        Status.UNAUTHORIZED,
        None,
    )


async def test_retry_after_is_honoured_and_the_failed_record_waits(broker: Broker) -> None:
    # Given a handler asking for a retry in 0.3 s, then for a retry in 100 s
    starts: list[float] = []
    worker = Worker()

    @worker.handler("limited")
    async def limited(job: Job) -> None:
        starts.append(time.monotonic())
        raise TooManyRequests("slow down", retry_after=0.3 if len(starts) == 1 else 100.0)

    job_id = await broker.enqueue(Job("limited"))
    async with consuming(worker, broker, backoff=(0.0, 0.0)):
        await until(lambda: _started(starts, 2), what="second attempt")
        record = await record_where(broker, job_id, lambda r: r.attempts == 2, [JobState.FAILED])
        failed_at = aware_now()
    # Then the second run came no earlier than retry_after
    assert starts[1] - starts[0] >= 0.28
    # And the record shows the failure and when the job runs again
    assert (record.status, record.attempts) == (Status.TOO_MANY_REQUESTS, 2)
    assert record.error == "TooManyRequests: slow down"
    assert record.run_at is not None
    assert 95 <= (record.run_at - failed_at).total_seconds() <= 101
    assert (await broker.stats())["default"].failed == 1


async def _started(starts: Sequence[float], n: int) -> bool:
    return len(starts) >= n


async def test_unknown_handler_is_not_found_and_retryable(broker: Broker) -> None:
    worker = Worker()
    worker.register("known", lambda job: None)
    job_id = await broker.enqueue(Job("unknown.handler"))
    async with consuming(worker, broker, max_retries=1):
        record = await record_in(broker, job_id)
    assert (record.state, record.status, record.attempts) == (
        JobState.DEAD,
        Status.NOT_FOUND,
        2,  # retried once: a newer worker may know the handler
    )
    assert record.error == "HandlerNotFound: no handler registered for 'unknown.handler'"


async def test_undecodable_message_is_dead_and_the_consumer_goes_on(
    broker: Broker, backend: str
) -> None:
    worker = Worker()
    worker.register("x", lambda job: None)
    garbage = await broker.enqueue(Job("x"))
    await corrupt(broker, backend, garbage)
    async with consuming(worker, broker):
        record = await record_in(broker, garbage)
        assert (record.state, record.status, record.attempts) == (
            JobState.DEAD,
            Status.BAD_REQUEST,
            1,
        )
        assert record.error
        good = await broker.enqueue(Job("x"))
        assert (await record_in(broker, good)).state == JobState.SUCCEEDED


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


async def test_a_message_nested_too_deep_is_dead_and_its_batch_runs(
    broker: Broker, backend: str
) -> None:
    worker = Worker()
    worker.register("x", lambda job: None)
    ids = await broker.enqueue_many([Job("x") for _ in range(60)])
    deep = ids[30]
    payload = b'{"id":"' + deep.encode() + b'","handler":"x","args":{"a":' + _nested(10_000)
    await corrupt(broker, backend, deep, payload + b"}}")
    assert (await broker.get(deep)) is not None  # a record still reads, args shown empty
    async with consuming(worker, broker):
        for job_id in ids:
            record = await record_in(broker, job_id)
            expected = JobState.DEAD if job_id == deep else JobState.SUCCEEDED
            assert record.state is expected, (job_id == deep, record)
    (dead,) = await broker.dead_letters()
    assert (dead.id, dead.status, dead.args) == (deep, Status.BAD_REQUEST, {})
    assert dead.error is not None and "RecursionError" in dead.error


async def test_args_nested_too_deep_are_refused_at_enqueue(broker: Broker) -> None:
    args: dict[str, object] = {"leaf": 1}
    for _ in range(1000):
        args = {"a": args}
    with pytest.raises(SerializationError, match=r"args\['a'\]\['a'\].*deeper than 200"):
        await broker.enqueue(Job("x", args))
    fine: dict[str, object] = {"leaf": 1}
    for _ in range(150):
        fine = {"a": fine}
    assert await broker.enqueue(Job("x", fine))
    assert (await broker.stats())["default"].queued == 1


async def test_delayed_job_runs_when_due_without_busy_polling(broker: Broker) -> None:
    started = asyncio.Event()
    worker = Worker()

    @worker.handler("later")
    async def later(job: Job) -> None:
        started.set()

    async with consuming(worker, broker):
        await asyncio.sleep(0.05)  # let the consumer go idle first
        t0, cpu0 = time.monotonic(), time.process_time()
        job_id = await broker.enqueue(Job("later"), delay=0.8)
        await asyncio.wait_for(started.wait(), 10.0)
        waited, cpu = time.monotonic() - t0, time.process_time() - cpu0
        await record_in(broker, job_id)
    assert waited >= 0.75
    # an idle consumer sleeps until the due time: it burns little CPU meanwhile
    assert cpu < 0.5 * waited, f"{cpu:.2f}s CPU in {waited:.2f}s"


async def test_cancel_running_job_within_a_second(broker: Broker) -> None:
    started = asyncio.Event()
    cancelled_at: list[float] = []
    worker = Worker()

    @worker.handler("long")
    async def long(job: Job) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled_at.append(time.monotonic())
            raise

    worker.register("x", lambda job: None)
    job_id = await broker.enqueue(Job("long"))
    async with consuming(worker, broker):
        await asyncio.wait_for(started.wait(), 10.0)
        t0 = time.monotonic()
        assert await broker.cancel(job_id) is True
        await until(lambda: _started(cancelled_at, 1), what="run cancelled")
        assert cancelled_at[0] - t0 < 1.0
        assert await broker.cancel(job_id) is False
        # the consumer goes on with other jobs
        other = await broker.enqueue(Job("x"))
        await record_in(broker, other)
    record = await broker.get(job_id)
    assert record is not None and record.state == JobState.CANCELLED


async def test_graceful_stop_returns_unfinished_jobs_without_counting_attempts(
    broker: Broker,
) -> None:
    # Given more blocking jobs than the consumer runs at once
    release = asyncio.Event()
    started: list[int] = []
    worker = Worker()

    @worker.handler("block")
    async def block(job: Job) -> None:
        assert job.ctx is not None
        started.append(job.ctx.attempt)
        await release.wait()

    ids = await broker.enqueue_many([Job("block") for _ in range(5)])
    task = asyncio.create_task(worker.consume(broker, concurrency=2, **FAST))
    await until(lambda: _started(started, 2), what="two runs")
    stats = (await broker.stats())["default"]
    # two running, one leased in advance (no run timed yet: the slow-job prefetch)
    assert stats.running == 2 + adaptive_prefetch(2, 1.0) == 3
    # When the worker stops before they finish
    await worker.stop(timeout=0.2)
    await asyncio.wait_for(task, 10.0)
    assert task.exception() is None
    # Then every job is queued again, attempts given back
    for job_id in ids:
        record = await broker.get(job_id)
        assert record is not None
        assert (record.state, record.attempts) == (JobState.QUEUED, 0), record
    # And the next consumer runs each as a first attempt
    started.clear()
    release.set()
    async with consuming(worker, broker):
        for job_id in ids:
            assert (await record_in(broker, job_id)).attempts == 1
    assert started == [1] * 5


async def test_stop_waits_for_runs_that_finish_in_time(broker: Broker) -> None:
    started = asyncio.Event()
    worker = Worker()

    @worker.handler("short")
    async def short(job: Job) -> None:
        started.set()
        await asyncio.sleep(0.2)

    job_id = await broker.enqueue(Job("short"))
    task = asyncio.create_task(worker.consume(broker))
    await asyncio.wait_for(started.wait(), 10.0)
    await worker.stop(timeout=10.0)
    # consume() returns once stop() completed, and the run was settled first
    await asyncio.wait_for(task, 1.0)
    record = await broker.get(job_id)
    assert record is not None and record.state == JobState.SUCCEEDED


async def test_lease_expiry_redelivers_then_dead_letters(broker: Broker) -> None:
    # Given a job claimed by a consumer that then dies (never renews, never settles)
    job_id = await broker.enqueue(Job("x", max_retries=1))
    first = await claim_one(broker, lease=0.2)
    assert first.attempt == 1
    # When the lease expires, Then the next claim gets it again, attempt counted
    second = await claim_one(broker, lease=0.2)
    assert (second.id, second.attempt) == (job_id, 2)
    assert second.token != first.token
    # And the dead consumer can neither settle nor renew it (fencing)
    late = Outcome(first, JobState.DEAD, Status.BAD_REQUEST, "BadRequest: late")
    assert await broker.settle([late]) == [False]
    assert await broker.renew([first], lease=30.0) == {job_id: "lost"}
    assert await broker.renew([second], lease=0.2) == {}  # the new holder keeps it
    record = await broker.get(job_id)
    assert record is not None and (record.state, record.attempts) == (JobState.RUNNING, 2)

    # When it expires again past max_retries, Then the next claim makes it dead (TIMEOUT)
    async def dead() -> bool:
        assert await broker.claim(["default"], 10, lease=30.0, max_retries=5) == []
        record = await broker.get(job_id)
        return record is not None and record.state == JobState.DEAD

    await until(dead, what="expired job dead")
    record = await broker.get(job_id)
    assert record is not None
    assert (record.state, record.status, record.attempts) == (JobState.DEAD, Status.TIMEOUT, 2)
    assert record.error is not None and record.error.startswith("JobTimeout: lease expired")
    assert await broker.renew([second], lease=30.0) == {job_id: "lost"}


async def test_renew_keeps_a_lease_and_settle_queued_gives_the_attempt_back(
    broker: Broker,
) -> None:
    job_id = await broker.enqueue(Job("x"))
    delivery = await claim_one(broker, lease=0.6)
    for _ in range(4):  # renewed past the first lease's end
        await asyncio.sleep(0.25)
        assert await broker.renew([delivery], lease=0.6) == {}
    assert await broker.claim(["default"], 1, lease=0.6, max_retries=3) == []
    assert await broker.settle([Outcome(delivery, JobState.QUEUED)]) == [True]
    record = await broker.get(job_id)
    assert record is not None and (record.state, record.attempts) == (JobState.QUEUED, 0)
    again = await claim_one(broker)
    assert (again.id, again.attempt) == (job_id, 1)
    # a cancelled running job: renew says so, settle changes nothing
    assert await broker.cancel(job_id) is True
    assert await broker.renew([again], lease=30.0) == {job_id: "cancelled"}
    done = Outcome(again, JobState.SUCCEEDED, Status.SUCCESS)
    assert await broker.settle([done]) == [False]
    record = await broker.get(job_id)
    assert record is not None and record.state == JobState.CANCELLED


async def test_claim_takes_oldest_first_across_queues_and_respects_the_limit(
    broker: Broker,
) -> None:
    ids = []
    for i in range(6):
        ids.append(await broker.enqueue(Job("x", {"i": i}, queue="ab"[i % 2])))
    await broker.enqueue(Job("x", queue="other"))
    claimed = await broker.claim(["a", "b"], 4, lease=30.0, max_retries=3)
    assert [d.id for d in claimed] == ids[:4]
    assert all(isinstance(d, Delivery) and d.job is not None for d in claimed)
    assert [d.job.args["i"] for d in claimed if d.job] == [0, 1, 2, 3]
    assert len(await broker.claim(["a", "b"], 10, lease=30.0, max_retries=3)) == 2


async def test_a_stalled_consumer_cannot_settle_after_its_lease_was_taken(
    broker: Broker, broker_url: str, backend: str, tmp_path: Path
) -> None:
    if backend == "memory":
        pytest.skip("memory:// is private to its process; a frozen consumer needs another one")
    # Given consumer A, another process, frozen whole (SIGSTOP: its loop and its lease
    # thread alike, as in a long GC or VM pause) while it runs the job
    job_id = await broker.enqueue(Job("job"))
    log = (tmp_path / "a.log").open("w")
    script = Path(__file__).with_name("stall_consumer.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    a = await asyncio.create_subprocess_exec(
        sys.executable, str(script), broker_url, str(tmp_path), "0.3", stderr=log, env=env
    )
    try:
        await until(lambda: _exists(tmp_path / "started"), timeout=30, what="A to start the job")
        a.send_signal(signal.SIGSTOP)
        # When consumer B takes the job over after A's lease expired
        b_attempts: list[int] = []
        release_b = asyncio.Event()
        worker_b = Worker()

        @worker_b.handler("job")
        async def finish(job: Job) -> None:
            assert job.ctx is not None
            b_attempts.append(job.ctx.attempt)
            await release_b.wait()

        async with consuming(worker_b, broker):
            await until(lambda: _started(b_attempts, 1), what="B runs the job")
            assert b_attempts == [2]
            a.send_signal(signal.SIGCONT)
            # Then A's late result (dead, 400) is dropped and logged
            await until(
                lambda: _exists(tmp_path / "a.log", "dropped"), timeout=30, what="A to drop it"
            )
            record = await broker.get(job_id)
            assert record is not None and record.state == JobState.RUNNING
            release_b.set()
            record = await record_in(broker, job_id)
        assert (record.state, record.attempts) == (JobState.SUCCEEDED, 2)
    finally:
        a.send_signal(signal.SIGCONT)
        a.terminate()
        await asyncio.wait_for(a.wait(), 30)
        log.close()


async def _exists(path: Path, text: str | None = None) -> bool:
    def check() -> bool:
        return path.exists() and (text is None or text in path.read_text())

    return await asyncio.to_thread(check)


class _ListHandler(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__()
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def _logged(messages: list[str], word: str) -> bool:
    return any(word in m for m in list(messages))


async def test_consume_validates_its_arguments(broker: Broker) -> None:
    worker = Worker()
    with pytest.raises(TypeError, match="queues"):
        await worker.consume(broker, queues="default")
    with pytest.raises(ValueError, match="queues"):
        await worker.consume(broker, queues=[])
    with pytest.raises(ValueError, match="concurrency"):
        await worker.consume(broker, concurrency=0)
    with pytest.raises(ValueError, match="lease"):
        await worker.consume(broker, lease=0)
    with pytest.raises(ValueError, match="max_retries"):
        await worker.consume(broker, max_retries=-1)
    with pytest.raises(ValueError, match="backoff"):
        await worker.consume(broker, backoff=(10.0, 1.0))
    with pytest.raises(TypeError, match="broker"):
        await worker.consume("memory://")  # type: ignore[arg-type]
    assert not worker.running


# ---------------------------------------------------------------------------------------
# backend-independent pieces
# ---------------------------------------------------------------------------------------
async def test_connect_rejects_unknown_schemes_naming_the_supported_ones() -> None:
    with pytest.raises(ValueError, match=r"memory://.*sqlite://.*redis://.*postgresql://"):
        await pywork.connect("ftp://example.com/q")
    with pytest.raises(ValueError, match="retention"):
        await pywork.connect("memory://", retention=-1)
    async with pywork.connect("memory://") as broker:
        assert isinstance(broker, MemoryBroker)


async def test_memory_stores_are_private_unless_named() -> None:
    a, b = await pywork.connect("memory://"), await pywork.connect("memory://")
    job_id = await a.enqueue(Job("x"))
    assert await b.get(job_id) is None
    named = await pywork.connect("memory://shared-test")
    same = await pywork.connect("memory://shared-test")
    job_id = await named.enqueue(Job("x"))
    assert await same.get(job_id) is not None


async def test_memory_join_waits_for_the_work_to_be_done() -> None:
    broker = MemoryBroker()
    worker = Worker()
    done: list[int] = []

    @worker.handler("x")
    async def x(job: Job) -> None:
        await asyncio.sleep(0.01)
        done.append(job.args["i"])

    await broker.enqueue_many([Job("x", {"i": i}) for i in range(20)])
    await broker.enqueue(Job("x", {"i": 99}), delay=3600)  # later work does not count
    with pytest.raises(TimeoutError):
        await broker.join(timeout=0.05)
    async with consuming(worker, broker):
        await broker.join(timeout=10)
        assert sorted(done) == list(range(20))


def test_full_jitter_backoff_stays_under_its_exponential_ceiling() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(300.0, 1.0 * 2 ** (attempt - 1))
        samples = [retry_delay(attempt, 1.0, 300.0, rng) for _ in range(300)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > 0.8 * ceiling  # spread over the whole range
        assert min(samples) < 0.2 * ceiling


def test_outcome_rules() -> None:
    job = Job("x")
    first = Delivery(job.id, "t", 1, job)
    last = Delivery(job.id, "t", 4, job)
    options: dict[str, Any] = {"max_retries": 3, "backoff": (1.0, 300.0)}
    assert outcome_for(first, Status.SUCCESS, None, **options).state == JobState.SUCCEEDED
    assert outcome_for(first, Status.NO_RESPONSE, None, **options).state == JobState.SUCCEEDED
    retry = outcome_for(first, Status.TIMEOUT, None, **options)
    assert retry.state == JobState.FAILED and 0 <= (retry.retry_in or 0) <= 1.0
    assert outcome_for(last, Status.UNAVAILABLE, None, **options).state == JobState.DEAD
    assert outcome_for(first, Status.BAD_REQUEST, None, **options).state == JobState.DEAD
    assert outcome_for(first, Status.CANCELLED, None, **options).state == JobState.DEAD
    stop = outcome_for(last, Status.CANCELLED, None, stopping=True, **options)
    assert stop.state == JobState.QUEUED
    error = TooManyRequests("later", retry_after=42)
    assert outcome_for(first, Status.TOO_MANY_REQUESTS, error, **options).retry_in == 42
    assert prefetch_for(1) == 1 and prefetch_for(100) == 100 and prefetch_for(10_000) == 100
    # the prefetch in use: what starts within PREFETCH_WAIT, between a quarter and all
    assert adaptive_prefetch(100, 1.0) == 25  # slow jobs: not hoarded
    assert adaptive_prefetch(100, 0.1) == 50
    assert adaptive_prefetch(100, 0.0001) == 100  # fast jobs: big batches
