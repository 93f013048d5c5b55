"""A consumer process for test_contract.py's frozen-consumer test.

Usage: python stall_consumer.py URL OUT_DIR LEASE

Its handler "job" writes ``OUT_DIR/started``, sleeps 2 s and ends with BAD_REQUEST; the
test freezes the whole process (SIGSTOP) meanwhile, so that its lease lapses. Log lines go
to stderr. SIGTERM stops the worker gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import pywork
from pywork import BadRequest, Job, Worker


async def main(url: str, out: Path, lease: float) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    broker = await pywork.connect(url)
    worker = Worker()

    @worker.handler("job")
    async def job(job: Job) -> None:
        (out / "started").write_text(job.id)
        await asyncio.sleep(2.0)
        raise BadRequest("late result")

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    consumer = asyncio.create_task(worker.consume(broker, lease=lease))
    await stop.wait()
    await worker.stop(timeout=10)
    await consumer
    await broker.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])))
