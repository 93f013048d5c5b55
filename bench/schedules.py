"""Cluster-schedule overhead, per backend: an idle consumer's CPU and the fire delay.

For each backend named on the command line (default: all that are available), with
1,000 schedules declared in a fresh store:

- idle CPU: a consumer (this process) whose 1,000 schedules are not due (every hour),
  with no jobs to run: CPU time of this process over 10 s, as % of one core (the
  ticker, the claimer's idle wait and the broker client; a server's own CPU is not
  counted). The same consumer with no schedules at all is shown for comparison;
- fire delay: ``--fast`` of the 1,000 (default 100) fire every second for 10 s; for
  each run, the delay from its tick's due time to the start of its job (the tick is
  read from the job's key), p50/p99/max, and the CPU % meanwhile.

Targets (issue 6): an idle consumer with 1,000 schedules under 2 % of a core; p99 fire
delay under 100 ms on Redis and PostgreSQL.

Redis and PostgreSQL: ``--redis-url`` / ``--postgres-url``, else throwaway servers
are started as in ``bench/brokers.py``.

Run: ``python bench/schedules.py [memory] [sqlite] [redis] [postgres] [--fast 100]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import datetime
from typing import Any

import pywork
from brokers import BACKENDS, fresh, servers
from pywork import Job, Worker
from pywork.brokers import Broker

SCHEDULES = 1_000
SECONDS = 10.0
#: backend -> (idle CPU % of a core, p99 fire delay ms) targets of issue 6
TARGETS: dict[str, tuple[float | None, float | None]] = {
    "memory": (None, None),
    "sqlite": (2.0, None),
    "redis": (2.0, 100.0),
    "postgres": (2.0, 100.0),
}


async def declare(broker: Broker, fast: int) -> None:
    """1,000 schedules: `fast` of them every second, the others every hour."""
    store: Any = broker
    for i in range(SCHEDULES):
        every = 1.0 if i < fast else 3600.0
        await store.schedule(f"s{i:04d}", Job("tick", {"i": i}), every=every)


async def consume_for(broker: Broker, seconds: float, delays: list[float]) -> float:
    """Run a consumer for `seconds` after a 1 s warm-up; return its CPU % of one core."""
    worker = Worker()

    @worker.handler("tick")
    async def tick(job: Job) -> None:
        assert job.key is not None
        due = datetime.fromisoformat(job.key.split("@", 1)[1]).timestamp()
        delays.append((time.time() - due) * 1000)

    task = asyncio.create_task(worker.consume(broker))
    await asyncio.sleep(1.0)  # declared, connected, idle
    delays.clear()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0) * 100
    await worker.stop()
    await task
    return cpu


def target(value: float, goal: float | None, unit: str) -> str:
    if goal is None:
        return ""
    return f"  (target < {goal:g}{unit}: {'met' if value < goal else 'MISSED'})"


async def bench(backend: str, base: str, fast: int) -> None:
    goal_cpu, goal_p99 = TARGETS[backend]
    print(f"\n== {backend}")
    delays: list[float] = []
    async with pywork.connect(fresh(backend, base)) as broker:
        cpu = await consume_for(broker, SECONDS, delays)
    print(f"  idle consumer, no schedules:       {cpu:5.2f} % of a core")
    async with pywork.connect(fresh(backend, base)) as broker:
        await declare(broker, 0)
        cpu = await consume_for(broker, SECONDS, delays)
    print(
        f"  idle consumer, {SCHEDULES:,} schedules:    {cpu:5.2f} % of a core"
        f"{target(cpu, goal_cpu, ' %')}"
    )
    async with pywork.connect(fresh(backend, base)) as broker:
        await declare(broker, fast)
        cpu = await consume_for(broker, SECONDS, delays)
    delays.sort()
    if not delays:
        print("  no tick fired")
        return
    p50 = statistics.median(delays)
    p99 = delays[max(0, int(len(delays) * 0.99) - 1)]
    print(
        f"  {fast} of {SCHEDULES:,} every 1 s ({len(delays)} runs): due-to-start p50 {p50:.1f} ms,"
        f" p99 {p99:.1f} ms, max {delays[-1]:.1f} ms{target(p99, goal_p99, ' ms')};"
        f" CPU {cpu:.1f} %"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("backends", nargs="*", choices=[*BACKENDS, []], default=[])
    parser.add_argument(
        "--fast", type=int, default=100, help="schedules firing every second (default 100)"
    )
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--postgres-url", help="use this PostgreSQL instead of starting one")
    args = parser.parse_args()
    if not 0 <= args.fast <= SCHEDULES:
        parser.error(f"--fast must be between 0 and {SCHEDULES}")
    names = args.backends or list(BACKENDS)
    with servers(names, args.redis_url, args.postgres_url) as urls:
        for name in names:
            if name in urls:
                await bench(name, urls[name], args.fast)


if __name__ == "__main__":
    asyncio.run(main())
