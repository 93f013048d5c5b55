"""Helpers for testing code that uses pywork: the in-memory broker and :func:`drain`.

Example::

    from pywork import Job
    from pywork.testing import MemoryBroker, drain

    async def test_welcome_email_is_sent() -> None:
        broker = MemoryBroker()
        await signup(broker, "a@b.c")            # your code enqueues Job("email.send", ...)
        await drain(worker, broker)              # runs every job that is due, then stops
        assert outbox == ["a@b.c"]
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

from pywork._durations import duration
from pywork.brokers.memory import MemoryBroker
from pywork.worker import Worker

__all__ = ["MemoryBroker", "drain"]


async def drain(
    worker: Worker,
    broker: MemoryBroker,
    *,
    queues: Sequence[str] = ("default",),
    timeout: float | timedelta = 10.0,
    max_retries: int = 3,
    backoff: tuple[float | timedelta, float | timedelta] = (0.0, 0.0),
    concurrency: int | None = None,
) -> None:
    """Consume `queues` of `broker` with `worker` until no job is left to run now.

    Jobs scheduled for later (``delay=``/``at=``) do not count. Retries happen at once
    by default (``backoff=(0, 0)``) so failing jobs reach the dead letters quickly.
    The worker is stopped when this returns (it can be started again); after a
    timeout, jobs still running are cancelled and go back to the queue.

    Raises:
        TypeError: `broker` is not a MemoryBroker.
        TimeoutError: jobs were still running or ready after `timeout` seconds.
    """
    if not isinstance(broker, MemoryBroker):
        raise TypeError(f"drain() needs a pywork.testing.MemoryBroker, got {broker!r}")
    limit = duration(timeout, "timeout")
    await worker.start()
    task = asyncio.create_task(
        worker.consume(
            broker,
            queues=queues,
            concurrency=concurrency,
            max_retries=max_retries,
            backoff=backoff,
        )
    )
    try:
        await asyncio.sleep(0)  # let consume() check its arguments and begin
        if task.done():
            task.result()  # raises what consume() raised (a bad argument)
        async with asyncio.timeout(limit):
            while True:  # a job of one queue may enqueue into another: until all are idle
                for queue in queues:
                    await broker.join(queue)
                if all([await _idle(broker, queue) for queue in queues]):
                    break
    finally:
        await worker.stop(timeout=0.0)  # nothing runs unless we timed out: cancel that
        if not task.done():
            await task


async def _idle(broker: MemoryBroker, queue: str) -> bool:
    try:
        await broker.join(queue, timeout=0)
    except TimeoutError:
        return False
    return True
