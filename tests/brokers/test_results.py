"""Results, progress and broker.wait on every backend (contract §10)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import pytest

from pywork import Context, Job, JobState, Progress, Status, Worker
from pywork.brokers import Broker, Delivery
from pywork.testing import MemoryBroker
from tests.brokers.support import consuming, record_where


async def test_a_succeeded_jobs_result_is_stored_and_wait_returns_it(broker: Broker) -> None:
    worker = Worker()

    @worker.handler("sum")
    async def total(job: Job) -> dict[str, object]:
        await asyncio.sleep(0.2)
        return {"sum": sum(job.args["n"]), "pair": (1, "a")}

    job_id = await broker.enqueue(Job("sum", {"n": [1, 2, 3]}))
    async with consuming(worker, broker):
        record = await broker.wait(job_id, timeout=20)
        returned = datetime.now(UTC)
    assert record.state is JobState.SUCCEEDED and record.status is Status.SUCCESS
    assert record.result == {"sum": 6, "pair": [1, "a"]}  # a tuple comes back as a list
    assert record.finished_at is not None
    assert (returned - record.finished_at).total_seconds() < 1.5  # within 1 s (+ slack)
    again = await broker.get(job_id)
    assert again is not None and again.result == record.result


async def test_a_result_that_is_not_json_is_an_internal_error(broker: Broker) -> None:
    worker = Worker()

    @worker.handler("when")
    async def when(job: Job) -> dict[str, object]:
        return {"at": datetime.now(UTC)}

    job_id = await broker.enqueue(Job("when", max_retries=0))
    async with consuming(worker, broker):
        record = await broker.wait(job_id, timeout=20)
    assert record.state is JobState.DEAD and record.status is Status.INTERNAL_ERROR
    assert record.error is not None and record.error.startswith("SerializationError: ")
    assert "result['at']" in record.error and record.result is None


async def test_wait_raises_key_error_at_once_and_times_out_without_touching_the_job(
    broker: Broker,
) -> None:
    t0 = time.monotonic()
    with pytest.raises(KeyError):
        await broker.wait("0" * 32, timeout=30)
    assert time.monotonic() - t0 < 5
    later = await broker.enqueue(Job("x"), delay=3600)
    with pytest.raises(TimeoutError):
        await broker.wait(later, timeout=0.3)
    record = await broker.get(later)
    assert record is not None and record.state is JobState.SCHEDULED


async def test_progress_shows_while_running_and_keeps_its_last_value(broker: Broker) -> None:
    worker = Worker()
    release = threading.Event()

    @worker.handler("crunch")
    def crunch(job: Job) -> None:  # a plain handler: reports from its thread
        assert job.ctx is not None
        i = 0
        while not release.is_set():
            i += 1
            job.ctx.set_progress(min(i, 999_999), 1_000_000, "crunching")
        job.ctx.set_progress(1_000_000, 1_000_000, "done")

    job_id = await broker.enqueue(Job("crunch"))
    async with consuming(worker, broker):
        running = await record_where(
            broker,
            job_id,
            lambda r: r.progress is not None,
            states=[JobState.RUNNING],
            timeout=10,
        )
        assert running.progress is not None and running.progress.message == "crunching"
        assert 0 < running.progress.current < 1_000_000 == running.progress.total
        release.set()
        record = await broker.wait(job_id, timeout=20)
    assert record.progress is not None
    assert (record.progress.current, record.progress.message) == (1_000_000, "done")
    assert record.progress.updated_at <= datetime.now(UTC)


async def test_a_retried_dead_job_starts_without_result_or_progress(broker: Broker) -> None:
    worker = Worker()

    @worker.handler("fail")
    async def fail(job: Job) -> None:
        assert job.ctx is not None
        job.ctx.set_progress(1, 2)
        job.ctx.status = Status.BAD_REQUEST

    job_id = await broker.enqueue(Job("fail"))
    async with consuming(worker, broker):
        dead = await broker.wait(job_id, timeout=20)
    assert dead.state is JobState.DEAD
    assert dead.progress is not None and dead.progress.current == 1
    assert await broker.retry_dead(job_id)
    queued = await broker.get(job_id)
    assert queued is not None and (queued.result, queued.progress) == (None, None)


def test_progress_reports_are_checked_and_the_latest_wins() -> None:
    ctx = Context(Job("x"))
    ctx.set_progress(3, 10, "x")
    ctx.set_progress(4)
    assert ctx.progress is not None
    assert (ctx.progress.current, ctx.progress.total, ctx.progress.message) == (4, None, None)
    for bad in [(-1,), (5, 4), (1, 0), (float("nan"),), (True,), (1, None, 5)]:
        with pytest.raises((ValueError, TypeError)):
            ctx.set_progress(*bad)  # type: ignore[arg-type]
    assert isinstance(ctx.progress, Progress) and ctx.progress.current == 4


async def test_reporting_in_a_tight_loop_costs_a_few_writes_a_second() -> None:
    class Counting(MemoryBroker):
        writes = 0

        async def _renew(
            self, deliveries: Sequence[Delivery], lease: float, progress: Mapping[str, bytes]
        ) -> dict[str, str]:
            self.writes += len(progress)
            return await super()._renew(deliveries, lease, progress)

    broker = Counting()
    worker = Worker()
    reports = 0

    @worker.handler("spin")
    async def spin(job: Job) -> None:
        nonlocal reports
        assert job.ctx is not None
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            for _ in range(1000):
                reports += 1
                job.ctx.set_progress(reports)
            await asyncio.sleep(0.001)  # lets the lease thread have the GIL now and then

    job_id = await broker.enqueue(Job("spin"))
    async with consuming(worker, broker):
        record = await broker.wait(job_id, timeout=20)
    assert record.progress is not None and record.progress.current == reports > 10_000
    assert 1 <= broker.writes <= 5 * 2.0 + 2  # at most 5 writes a second per running job
