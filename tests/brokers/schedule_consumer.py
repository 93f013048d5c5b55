"""A consumer process for test_schedules_cluster.py: records each job it runs in a side file.

Usage: python schedule_consumer.py URL SIDE_FILE READY_FILE

Each run of a ``record`` job appends ``<job key> <job id>\\n`` to SIDE_FILE (one write,
so a kill -9 never leaves half a line). Once consuming, the process appends its pid to
READY_FILE. SIGTERM stops the worker gracefully.

Environment:
    PYWORK_TEST_CLOCK_OFFSET: seconds added to this process's schedule clock
        (``pywork.cron.now``), to test clock skew between consumers.
    PYWORK_TEST_DECLARE: a schedule name this worker declares with ``Worker.schedule``
        (``Job("record")`` every second), as an app declaring its schedules at startup.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from typing import TextIO

import pywork
from pywork import Job, Worker, cron


def skew_clock(offset: float) -> None:
    """Make this process's schedule clock run `offset` seconds ahead of the real one."""
    delta = timedelta(seconds=offset)

    def skewed() -> datetime:
        return datetime.now(UTC) + delta

    cron.now = skewed


def mark_ready(ready_file: str) -> None:
    with open(ready_file, "a") as ready:
        ready.write(f"{os.getpid()}\n")


async def main(url: str, side: TextIO, ready_file: str) -> None:
    broker = await pywork.connect(url)
    worker = Worker()

    @worker.handler("record")
    async def record(job: Job) -> None:
        side.write(f"{job.key} {job.id}\n")
        side.flush()

    declare = os.environ.get("PYWORK_TEST_DECLARE")
    if declare:
        worker.schedule(declare, Job("record"), every=1.0)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await worker.start()
    consumer = asyncio.create_task(
        worker.consume(broker, concurrency=4, lease=1.0, backoff=(0.01, 0.1))
    )
    mark_ready(ready_file)
    await stop.wait()
    await worker.stop(timeout=10)
    await consumer
    await broker.close()


if __name__ == "__main__":
    skew_clock(float(os.environ.get("PYWORK_TEST_CLOCK_OFFSET", "0")))
    with open(sys.argv[2], "a", buffering=1) as side_file:
        asyncio.run(main(sys.argv[1], side_file, sys.argv[3]))
