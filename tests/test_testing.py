"""pywork.testing: what users' own tests rely on."""

from __future__ import annotations

import pytest

from pywork import BadRequest, Job, JobState, Worker
from pywork.testing import MemoryBroker, drain


async def test_drain_runs_due_jobs_then_stops_the_worker() -> None:
    # Given jobs that fan out into another queue, one that fails, and one for later
    broker = MemoryBroker()
    worker = Worker()
    done: list[str] = []

    @worker.handler("signup")
    async def signup(job: Job) -> None:
        await broker.enqueue(Job("email", {"to": job.args["user"]}, queue="mail"))

    @worker.handler("email")
    async def email(job: Job) -> None:
        done.append(job.args["to"])

    @worker.handler("broken")
    async def broken(job: Job) -> None:
        raise BadRequest("no")

    await broker.enqueue(Job("signup", {"user": "a@b.c"}))
    bad = await broker.enqueue(Job("broken"))
    later = await broker.enqueue(Job("email", {"to": "later"}, queue="mail"), delay=3600)

    # When drained
    await drain(worker, broker, queues=["default", "mail"])

    # Then every due job ran, the later one waits, and the worker is stopped
    assert done == ["a@b.c"]
    assert [r.id for r in await broker.dead_letters()] == [bad]
    record = await broker.get(later)
    assert record is not None and record.state == JobState.SCHEDULED
    assert not worker.running


async def test_drain_times_out_and_checks_its_broker() -> None:
    broker = MemoryBroker()
    worker = Worker()

    @worker.handler("slow")
    async def slow(job: Job) -> None:
        import asyncio

        await asyncio.sleep(30)

    await broker.enqueue(Job("slow"))
    with pytest.raises(TimeoutError):
        await drain(worker, broker, timeout=0.2)
    assert not worker.running
    with pytest.raises(TypeError, match="MemoryBroker"):
        await drain(worker, "memory://")  # type: ignore[arg-type]
