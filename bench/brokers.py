"""Durable broker throughput and latency, per backend, in one run.

For each backend named on the command line (default: all that are available):

- enqueue rate: ``enqueue`` one job at a time, and ``enqueue_many`` in batches of 100;
- end-to-end rate of N no-op jobs (``--jobs``, default 20 000) drained by one consumer
  process (this one, after enqueueing them all), default concurrency (100), until the
  worker stopped with every outcome settled;
- the same for 2 000 jobs that each ``await asyncio.sleep(0.01)``, concurrency 200;
- enqueue-to-start latency p50/p99 at a light steady load (200 jobs/s for 2 s), the
  producer in the consumer's process (SQLite wakes other processes' consumers by a
  poll: add up to ``POLL_INTERVAL`` there).

Redis and PostgreSQL: ``--redis-url`` / ``--postgres-url``, else a throwaway server is
started with the classes of ``tests/servers.py`` (Debian packages ``redis-server`` and
``postgresql``). Each measurement uses a fresh store (key prefix, schema or file).

Run: ``python bench/brokers.py [memory] [sqlite] [redis] [postgres] [--jobs 20000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pywork
from pywork import Job, Worker
from pywork.brokers import Broker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import PostgresServer, RedisServer

BACKENDS = ("memory", "sqlite", "redis", "postgres")
#: backend -> (no-op jobs/s, sleep(0.01) jobs/s, p50 latency ms) targets of issue 4
TARGETS: dict[str, tuple[float | None, float | None, float | None]] = {
    "memory": (None, None, None),
    "sqlite": (5_000, None, None),
    "redis": (20_000, 8_000, 2.0),
    "postgres": (5_000, None, None),
}


@contextlib.contextmanager
def servers(
    names: list[str], redis_url: str | None, pg_url: str | None
) -> Iterator[dict[str, str]]:
    """Yield a base URL per backend, starting throwaway servers when needed."""
    started: list[RedisServer | PostgresServer] = []
    urls: dict[str, str] = {}
    tmp = Path(tempfile.mkdtemp(prefix="pywork-bench-"))
    try:
        for name in names:
            if name == "memory":
                urls[name] = "memory://"
            elif name == "sqlite":
                urls[name] = f"sqlite:///{tmp}"
            elif name == "redis":
                if redis_url is None:
                    server = RedisServer()
                    if server.binary is None:
                        print("redis: redis-server not installed, skipped", file=sys.stderr)
                        continue
                    server.start()
                    started.append(server)
                    redis_url = server.url
                urls[name] = redis_url
            elif name == "postgres":
                if pg_url is None:
                    pg = PostgresServer()
                    if pg.bin is None:
                        print("postgres: PostgreSQL not installed, skipped", file=sys.stderr)
                        continue
                    pg.init()
                    pg.start()
                    started.append(pg)
                    pg_url = pg.url
                urls[name] = pg_url
        yield urls
    finally:
        for server in started:
            server.close()


def fresh(backend: str, base: str) -> str:
    """A URL of a new, empty store."""
    tag = f"b{uuid.uuid4().hex[:12]}"
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"{base}/{tag}.db"
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}{'prefix' if backend == 'redis' else 'schema'}={tag}"


@contextlib.asynccontextmanager
async def store(backend: str, base: str) -> AsyncIterator[Broker]:
    async with pywork.connect(fresh(backend, base)) as broker:
        yield broker


async def enqueue_single(broker: Broker, n: int) -> float:
    jobs = [Job("noop", {"i": i}) for i in range(n)]
    t0 = time.perf_counter()
    for job in jobs:
        await broker.enqueue(job)
    return n / (time.perf_counter() - t0)


async def enqueue_batches(broker: Broker, n: int) -> float:
    jobs = [Job("noop", {"i": i}) for i in range(n)]
    t0 = time.perf_counter()
    for start in range(0, n, 100):
        await broker.enqueue_many(jobs[start : start + 100])
    return n / (time.perf_counter() - t0)


async def drain(broker: Broker, n: int, handler: Callable[..., object], concurrency: int) -> float:
    """Enqueue n jobs, then time one consumer from start until all ran and settled."""
    jobs = [Job("work") for _ in range(n)]
    for start in range(0, n, 1000):
        await broker.enqueue_many(jobs[start : start + 1000])
    worker = Worker()
    done = asyncio.Event()
    count = 0

    async def work(job: Job) -> None:
        nonlocal count
        await handler()  # type: ignore[misc]
        count += 1
        if count == n:
            done.set()

    worker.register("work", work)
    t0 = time.perf_counter()
    task = asyncio.create_task(worker.consume(broker, concurrency=concurrency))
    await done.wait()
    await worker.stop()
    await task
    took = time.perf_counter() - t0
    stats = (await broker.stats())["default"]
    assert stats.succeeded == n, stats
    return n / took


async def latency(broker: Broker, rate: float = 200.0, seconds: float = 2.0) -> list[float]:
    """Enqueue-to-start delays (ms) of jobs enqueued at `rate` per second."""
    worker = Worker()
    delays: list[float] = []
    n = int(rate * seconds)
    all_ran = asyncio.Event()

    @worker.handler("probe")
    async def probe(job: Job) -> None:
        delays.append((time.perf_counter() - job.args["t"]) * 1000)
        if len(delays) == n:
            all_ran.set()

    task = asyncio.create_task(worker.consume(broker))
    await asyncio.sleep(0.3)  # let the consumer go idle
    for _ in range(n):
        await broker.enqueue(Job("probe", {"t": time.perf_counter()}))
        await asyncio.sleep(1 / rate)
    await asyncio.wait_for(all_ran.wait(), 30)
    await worker.stop()
    await task
    return delays


async def noop() -> None:
    """A no-op handler body."""


async def nap() -> None:
    """A 10 ms I/O wait."""
    await asyncio.sleep(0.01)


def target(value: float, goal: float | None, higher: bool = True) -> str:
    if goal is None:
        return ""
    ok = value >= goal if higher else value <= goal
    return f"  (target {'>=' if higher else '<'} {goal:,.0f}{'' if higher else ' ms'}: " + (
        "met)" if ok else "MISSED)"
    )


async def bench(backend: str, base: str, jobs: int) -> None:
    goal_noop, goal_sleep, goal_p50 = TARGETS[backend]
    print(f"\n== {backend}")
    async with store(backend, base) as broker:
        rate = await enqueue_single(broker, 2000)
    print(f"  enqueue, one at a time:       {rate:>9,.0f} jobs/s")
    async with store(backend, base) as broker:
        rate = await enqueue_batches(broker, jobs)
    print(f"  enqueue_many, batches of 100: {rate:>9,.0f} jobs/s")
    async with store(backend, base) as broker:
        rate = await drain(broker, jobs, noop, 100)
    print(f"  end to end, {jobs:,} no-op:    {rate:>9,.0f} jobs/s{target(rate, goal_noop)}")
    async with store(backend, base) as broker:
        rate = await drain(broker, 2000, nap, 200)
    print(f"  end to end, 2,000 sleep(0.01), concurrency 200: {rate:,.0f} jobs/s"
          f"{target(rate, goal_sleep)}")  # fmt: skip
    async with store(backend, base) as broker:
        delays = sorted(await latency(broker))
    p50 = statistics.median(delays)
    p99 = delays[int(len(delays) * 0.99) - 1]
    print(f"  enqueue-to-start at 200 jobs/s: p50 {p50:.2f} ms, p99 {p99:.2f} ms"
          f"{target(p50, goal_p50, higher=False)}")  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("backends", nargs="*", choices=[*BACKENDS, []], default=[])
    parser.add_argument("--jobs", type=int, default=20_000, help="no-op jobs (default 20000)")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--postgres-url", help="use this PostgreSQL instead of starting one")
    args = parser.parse_args()
    names = args.backends or list(BACKENDS)
    with servers(names, args.redis_url, args.postgres_url) as urls:
        for name in names:
            if name in urls:
                await bench(name, urls[name], args.jobs)


if __name__ == "__main__":
    asyncio.run(main())
