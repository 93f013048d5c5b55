"""A consumer process for test_crash.py: records each job id it runs in a side file.

Usage: python crash_consumer.py URL SIDE_FILE CONCURRENCY LEASE

Each run appends ``<job id>\\n`` to SIDE_FILE and flushes (one write, so a kill -9 never
leaves half a line). SIGTERM stops the worker gracefully.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import TextIO

import pywork
from pywork import Job, Worker


async def main(url: str, side: TextIO, concurrency: int, lease: float) -> None:
    broker = await pywork.connect(url)
    worker = Worker()

    @worker.handler("record")
    async def record(job: Job) -> None:
        await asyncio.sleep(0.001)  # keep a few runs in flight at any time
        side.write(f"{job.id}\n")
        side.flush()

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    consumer = asyncio.create_task(
        worker.consume(broker, concurrency=concurrency, lease=lease, backoff=(0.01, 0.1))
    )
    await stop.wait()
    await worker.stop(timeout=10)
    await consumer
    await broker.close()


if __name__ == "__main__":
    with open(sys.argv[2], "a", buffering=1) as side_file:
        asyncio.run(main(sys.argv[1], side_file, int(sys.argv[3]), float(sys.argv[4])))
