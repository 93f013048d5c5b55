"""Exactly once across a cluster: 4 consumer processes, clock skew, a kill -9 and a restart.

Runs schedule_consumer.py in subprocesses against each durable backend: one 12-second
run per backend with a schedule every second. One consumer's clock runs 0.5 s ahead;
another is killed with SIGKILL around second 5 and restarted (declaring the schedule
again, as an app does at startup). Each tick must produce exactly one job.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pywork import Job, JobState
from pywork.brokers import Broker
from pywork.brokers.base import ScheduleStore
from pywork.cron import tick_key
from tests.brokers.support import until

SCRIPT = Path(__file__).with_name("schedule_consumer.py")
CONSUMERS = 4
SECONDS = 12
NAME = "beat"


async def start_consumer(
    url: str, side_file: Path, ready_file: Path, **env: str
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), url, str(side_file), str(ready_file),
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env},
    )  # fmt: skip


def runs(side_file: Path) -> list[tuple[str, str]]:
    """The (key, job id) of every run recorded so far."""
    if not side_file.exists():
        return []
    return [
        (key, job_id)
        for key, job_id in (line.split() for line in side_file.read_text().splitlines())
    ]


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("backend", ["sqlite", "redis", "postgres"])
async def test_each_tick_fires_once_across_consumers_with_skew_and_a_kill(
    broker: Broker, broker_url: str, tmp_path: Path
) -> None:
    schedules: ScheduleStore = broker
    side_file, ready_file = tmp_path / "ran.txt", tmp_path / "ready.txt"

    async def distinct_keys_at_least(n: int) -> bool:
        return len({key for key, _ in runs(side_file)}) >= n

    # Given 4 consumers, the first with its clock 0.5 s ahead
    procs = [
        await start_consumer(
            broker_url, side_file, ready_file, PYWORK_TEST_CLOCK_OFFSET="0.5" if i == 0 else "0"
        )
        for i in range(CONSUMERS)
    ]
    try:
        await until(_ready(ready_file, CONSUMERS), 60.0, "every consumer started")

        # When a schedule every second is declared
        record = await schedules.schedule(NAME, Job("record"), every=1.0)
        first_tick = record.next_run_at

        # And one consumer (clock not skewed) is killed around second 5 and restarted
        await until(lambda: distinct_keys_at_least(6), 30.0, "6 ticks run")
        procs[1].send_signal(signal.SIGKILL)
        await procs[1].wait()
        killed_at = (datetime.now(UTC) - first_tick).total_seconds()
        procs[1] = await start_consumer(broker_url, side_file, ready_file, PYWORK_TEST_DECLARE=NAME)

        # And the schedule is removed about 12 seconds after its first tick
        await until(lambda: distinct_keys_at_least(SECONDS - 1), 60.0, f"{SECONDS - 1} ticks")
        end = first_tick + timedelta(seconds=SECONDS - 0.7)  # between two ticks
        await asyncio.sleep(max(0.0, (end - datetime.now(UTC)).total_seconds()))
        assert await schedules.unschedule(NAME)
        ended = datetime.now(UTC)
        await until(_all_done(broker), 30.0, "every fired job succeeded")
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(proc.wait(), 30) for proc in procs]
    assert codes == [0] * CONSUMERS

    # Then the ticks fired are the grid's ticks in the window, each once, none missing
    window = (ended - first_tick).total_seconds()
    expected = int(window) + 1  # ticks first_tick + k <= ended
    stats = (await broker.stats())["default"]
    fired = stats.succeeded
    assert stats.succeeded == sum(getattr(stats, state.value) for state in JobState)
    ids_by_key: defaultdict[str, set[str]] = defaultdict(set)
    for key, job_id in runs(side_file):
        ids_by_key[key].add(job_id)
    assert all(len(ids) == 1 for ids in ids_by_key.values()), "a tick fired twice"
    assert len(ids_by_key) == fired
    assert abs(fired - expected) <= 1, (fired, expected, window)
    assert sorted(ids_by_key) == sorted(
        tick_key(NAME, first_tick + timedelta(seconds=k)) for k in range(fired)
    )
    reruns = sum(1 for _ in runs(side_file)) - fired  # jobs run again after the kill
    print(
        f"{fired} ticks fired in {window:.1f}s (expected {expected}); consumer killed at "
        f"{killed_at:.1f}s; {reruns} job(s) of the killed consumer ran again"
    )


def _ready(ready_file: Path, n: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return count_lines(ready_file) >= n

    return check


def _all_done(broker: Broker):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        stats = (await broker.stats()).get("default")
        if stats is None:
            return False
        total = sum(getattr(stats, state.value) for state in JobState)
        return bool(stats.succeeded == total)

    return check
