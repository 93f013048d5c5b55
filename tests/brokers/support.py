"""Helpers shared by the broker tests: waiting on broker state, running a consumer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from pywork import JobRecord, JobState, Worker
from pywork.brokers import Broker, Delivery

FINAL = (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED)
#: consumer options that make retries fast in tests
FAST: dict[str, Any] = {"backoff": (0.005, 0.02)}


async def until(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Await `check()` every few ms until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.01)


async def record_in(
    broker: Broker, job_id: str, states: Sequence[JobState] = FINAL, timeout: float = 10.0
) -> JobRecord:
    """Wait until the job's record is in one of `states` and return it."""
    found: list[JobRecord] = []

    async def check() -> bool:
        record = await broker.get(job_id)
        if record is not None and record.state in states:
            found.append(record)
            return True
        return False

    await until(check, timeout, f"job {job_id} in {[s.value for s in states]}")
    return found[-1]


async def record_where(
    broker: Broker,
    job_id: str,
    predicate: Callable[[JobRecord], bool],
    states: Sequence[JobState] = FINAL,
    timeout: float = 10.0,
) -> JobRecord:
    """Wait until the job's record is in one of `states` and matches `predicate`."""
    found: list[JobRecord] = []

    async def check() -> bool:
        record = await broker.get(job_id)
        if record is not None and record.state in states and predicate(record):
            found.append(record)
            return True
        return False

    await until(check, timeout, f"job {job_id} in {[s.value for s in states]} and matching")
    return found[-1]


async def claim_one(
    broker: Broker,
    queues: Sequence[str] = ("default",),
    *,
    lease: float = 30.0,
    max_retries: int = 3,
    timeout: float = 10.0,
) -> Delivery:
    """Claim one job, sleeping in broker.wait_for_work() while none is ready."""
    deadline = time.monotonic() + timeout
    while True:
        claimed = await broker.claim(queues, 1, lease=lease, max_retries=max_retries)
        if claimed:
            return claimed[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing to claim in {queues} within {timeout}s")
        await broker.wait_for_work(queues, 0.5)


@asynccontextmanager
async def consuming(
    worker: Worker, broker: Broker, *, stop_timeout: float = 5.0, **options: Any
) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``worker.consume(broker, **options)`` for the block, then stop the worker."""
    await worker.start()  # (consume() would start it too, but the block may test it at once)
    task = asyncio.create_task(worker.consume(broker, **{**FAST, **options}))
    try:
        await asyncio.sleep(0)
        yield task
    finally:
        await worker.stop(timeout=stop_timeout)
        await asyncio.wait_for(task, 10.0)
