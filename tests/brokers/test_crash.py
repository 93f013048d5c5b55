"""At-least-once across a crash: kill -9 a consumer mid-run, start another, lose nothing.

Runs crash_consumer.py in subprocesses against each durable backend.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pywork import Job, QueueStats
from pywork.brokers import Broker
from pywork.consumer import prefetch_for
from tests.brokers.support import until

JOBS = 5_000
CONCURRENCY = 20
LEASE = 1.0
SCRIPT = Path(__file__).with_name("crash_consumer.py")
LINE = 33  # 32 hex characters and a newline


async def start_consumer(url: str, side_file: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), url, str(side_file), str(CONCURRENCY), str(LEASE),
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip


def lines(side_file: Path) -> int:
    return side_file.stat().st_size // LINE if side_file.exists() else 0


@pytest.mark.parametrize("backend", ["sqlite", "redis", "postgres"])
async def test_kill_9_mid_run_loses_nothing(
    broker: Broker, broker_url: str, tmp_path: Path
) -> None:
    # Given 5,000 jobs
    jobs = [Job("record") for _ in range(JOBS)]
    for start in range(0, JOBS, 1000):
        await broker.enqueue_many(jobs[start : start + 1000])
    side_file = tmp_path / "ran.txt"

    # When a consumer is killed with SIGKILL once some hundreds ran
    first = await start_consumer(broker_url, side_file)
    try:
        await until(_ran(side_file, 300), 60.0, "300 jobs run by the first consumer")
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    at_kill = lines(side_file)
    assert at_kill < JOBS, "the first consumer finished before it was killed"

    # And another consumer takes over
    second = await start_consumer(broker_url, side_file)
    try:
        t0 = time.monotonic()
        await until(_all_succeeded(broker), 60.0, "every job succeeded")
        took = time.monotonic() - t0
    finally:
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 30) == 0

    # Then every job ran at least once, and only jobs in flight at the kill ran twice
    ran = Counter(side_file.read_text().split())
    assert set(ran) == {job.id for job in jobs}
    duplicates = sum(n - 1 for n in ran.values())
    assert duplicates <= CONCURRENCY + prefetch_for(CONCURRENCY), (duplicates, at_kill)
    stats = (await broker.stats())["default"]
    assert stats == QueueStats(succeeded=JOBS)
    print(f"killed after {at_kill} runs; {duplicates} ran twice; rest took {took:.2f}s")


def _ran(side_file: Path, n: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return lines(side_file) >= n

    return check


def _all_succeeded(broker: Broker):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        stats = (await broker.stats()).get("default")
        return stats is not None and stats.succeeded == JOBS

    return check
