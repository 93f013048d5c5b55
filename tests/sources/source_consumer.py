"""A consumer process for the kill -9 test: takes messages and hangs in their handlers.

Usage: python source_consumer.py pulsar SERVICE_URL TOPIC SIDE_FILE
       python source_consumer.py s3 ENDPOINT_URL BUCKET/PREFIX SIDE_FILE

Each run appends ``<n>\\n`` (the message's ``{"n": ...}``) to SIDE_FILE in one write, then
waits forever: the test kills the process with SIGKILL while the messages are taken.
"""

from __future__ import annotations

import asyncio
import os
import sys

from pywork import Job, Worker
from pywork.sources import Source


def make_source(kind: str, where: str, what: str) -> Source:
    if kind == "pulsar":
        from pywork.sources import PulsarSource

        return PulsarSource(where, what, "pywork", receiver_queue_size=1)
    from pywork.sources import S3Source

    bucket, prefix = what.split("/", 1)
    return S3Source(bucket, prefix, endpoint_url=where, lease=1.0, prefetch=1, poll_interval=0.05)


async def main(kind: str, where: str, what: str, side: int) -> None:
    worker = Worker()

    @worker.handler("hang")
    async def hang(job: Job) -> None:
        os.write(side, f"{job.args['received_data']['n']}\n".encode())
        await asyncio.Event().wait()

    await worker.consume_source(make_source(kind, where, what), Job("hang"), concurrency=3)


if __name__ == "__main__":
    kind, where, what, side_file = sys.argv[1:5]
    side = os.open(side_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    asyncio.run(main(kind, where, what, side))
