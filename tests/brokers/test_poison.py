"""No single bad record hurts another job: bad records written straight into storage
among valid jobs, on every backend (issue 11). Reads report them; claims run the rest."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from urllib.parse import urlsplit

import pytest

from pywork import Job, JobState, Status, Worker
from pywork.brokers import Broker, mask_url
from pywork.brokers.front import MAX_ERROR_LENGTH
from pywork.job import MAX_NAME_LENGTH
from pywork.testing import MemoryBroker
from tests.brokers.support import consuming, record_in


async def poke(broker: Broker, backend: str, job_id: str, column: str, value: object) -> None:
    """Write `value` into the stored `column` (state or status) of `job_id`, bypassing pywork."""
    if backend == "memory":
        assert isinstance(broker, MemoryBroker)
        setattr(broker._memory.jobs[job_id], column, value)
    elif backend == "sqlite":
        with sqlite3.connect(urlsplit(broker.url).path[1:]) as db:
            db.execute(f"UPDATE pywork_jobs SET {column} = ? WHERE id = ?", (value, job_id))
        db.close()
    elif backend == "redis":
        key = f"{broker._p}job:{job_id}"  # type: ignore[attr-defined]
        await broker._client.hset(key, column, str(value))  # type: ignore[attr-defined]
    elif backend == "postgres":
        async with broker.pool.acquire() as conn:  # type: ignore[attr-defined]
            schema = broker._schema  # type: ignore[attr-defined]
            await conn.execute(
                f"UPDATE {schema}.jobs SET {column} = $1 WHERE id = $2", value, job_id
            )
    else:
        raise AssertionError(backend)


async def test_a_dead_record_with_an_unknown_status_is_reported_not_fatal(
    broker: Broker, backend: str
) -> None:
    worker = Worker()

    @worker.handler("bad")
    async def bad(job: Job) -> None:
        assert job.ctx is not None
        job.ctx.status = Status.BAD_REQUEST

    ids = [await broker.enqueue(Job("bad")) for _ in range(3)]
    async with consuming(worker, broker):
        for job_id in ids:
            await record_in(broker, job_id)
    await poke(broker, backend, ids[1], "status", 999)
    record = await broker.get(ids[1])
    assert record is not None and record.state is JobState.DEAD and record.status is None
    assert record.error is not None and "unknown status 999" in record.error
    dead = {record.id: record for record in await broker.dead_letters()}
    assert set(dead) == set(ids) and dead[ids[0]].status is Status.BAD_REQUEST
    assert dead[ids[1]].status is None
    assert (await broker.stats())["default"].dead == 3
    if backend != "memory":  # the CLI's read commands report it too (memory is per process)
        for command in (["dead", "list", "--json"], ["queues", "--json"], ["status", ids[1]]):
            done = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pywork", *command, "--broker", broker.url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await done.communicate()
            assert out, command
            assert done.returncode == 0, (command, err)
            assert b"Traceback" not in err


async def test_a_huge_error_is_stored_cut(broker: Broker) -> None:
    worker = Worker()

    @worker.handler("loud")
    async def loud(job: Job) -> None:
        raise ValueError("x" * 1_000_000)

    job_id = await broker.enqueue(Job("loud", max_retries=0))
    async with consuming(worker, broker):
        record = await record_in(broker, job_id)
    assert record.error is not None and record.error.startswith("ValueError: xxx")
    assert len(record.error) < MAX_ERROR_LENGTH + 100 and "more characters cut" in record.error


def test_names_beyond_the_limit_are_refused() -> None:
    long = "n" * (MAX_NAME_LENGTH + 1)
    with pytest.raises(ValueError, match="at most 255"):
        Job(long)
    with pytest.raises(ValueError, match="at most 255"):
        Job("x", queue=long)
    with pytest.raises(ValueError, match="at most 255"):
        Job("x", key=long)
    with pytest.raises(ValueError, match="at most 255"):
        Worker().register(long, lambda job: None)
    assert Job("h" * MAX_NAME_LENGTH).handler


async def test_a_too_long_schedule_name_is_refused(broker: Broker) -> None:
    with pytest.raises(ValueError, match="schedule names are at most"):
        await broker.schedule("s" * MAX_NAME_LENGTH, Job("x"), every=60)
    assert await broker.schedules() == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://h:6379/0?password=s3cret", "redis://h:6379/0?password=***"),
        (
            "postgresql://u@h/db?sslmode=require&password=s3cret",
            "postgresql://u@h/db?sslmode=require&password=***",
        ),
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("postgresql://u:s3cret@h/db?PassWord=s3cret", "postgresql://u:***@h/db?PassWord=***"),
        ("sqlite:///pywork.db", "sqlite:///pywork.db"),
    ],
)
def test_passwords_are_masked_in_the_userinfo_and_the_query(url: str, shown: str) -> None:
    assert mask_url(url) == shown


async def test_a_record_with_an_unknown_state_is_reported_not_fatal(
    broker: Broker, backend: str
) -> None:
    if backend in ("memory", "postgres"):  # nothing else writes memory's store, and
        pytest.skip(f"{backend} storage cannot hold an unknown state")  # PostgreSQL CHECKs it
    ids = await broker.enqueue_many([Job("x") for _ in range(3)])
    await poke(broker, backend, ids[1], "state", "bogus")
    record = await broker.get(ids[1])
    assert record is not None and record.state == "bogus"
    assert record.error is not None and "unknown state 'bogus'" in record.error
    stats = await broker.stats()  # the bogus record is left out, the others counted
    assert stats["default"].queued >= 2
    worker = Worker()
    worker.register("x", lambda job: None)
    async with consuming(worker, broker):
        for job_id in (ids[0], ids[2]):
            assert (await record_in(broker, job_id)).state is JobState.SUCCEEDED
