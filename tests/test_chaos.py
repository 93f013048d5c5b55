"""The chaos drill: 3 worker processes under the supervisor, kill -9 all along.

Per durable backend: 3,000 jobs with random 0-50 ms of work, consumed by
``pywork worker APP --processes 3``; a random child is killed with SIGKILL every 2-4 s,
eight times (and the Redis / PostgreSQL server is restarted twice meanwhile). Afterwards
every job succeeded, none is dead or missing, the duplicated runs are within what the
kills (and restarts) can cause, and the supervisor drains and exits 0. Each run appends
its job id to a side file (one ``write`` with O_APPEND, so a kill never leaves half a
line), which counts runs and duplicates.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pywork
from pywork import Job
from tests.servers import PostgresServer, RedisServer, missing
from tests.test_cli import children_of, wait_until

JOBS = 3_000
PROCESSES = 3
CONCURRENCY = 1  # per process: the work lasts ~25 s, across all the kills
KILLS = 8
RESTARTS = 2  # of the server, on Redis and PostgreSQL
LINE = 33  # 32 hex characters and a newline
Store = tuple[str, Callable[[], None]]

APP = textwrap.dedent(
    """
    import asyncio, os, random
    from pywork import Worker

    worker = Worker(name="chaos")
    side = os.open(os.environ["CHAOS_SIDE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @worker.handler("work")
    async def work(job):
        await asyncio.sleep(random.uniform(0, 0.05))
        os.write(side, f"{job.id}\\n".encode())
    """
)


@pytest.fixture
def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Callable[[], None]]]:
    """(url, restart the server) of the backend under test, on a server of its own."""
    backend: str = request.param
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'chaos.db'}", lambda: None
    elif backend == "redis":
        redis = RedisServer()
        if redis.binary is None:
            missing("redis-server")
        redis.start()
        try:
            yield redis.url, redis.restart
        finally:
            redis.close()
    else:
        postgres = PostgresServer()
        if postgres.bin is None:
            missing("PostgreSQL (initdb)")
        postgres.init()
        postgres.start()
        try:
            yield postgres.url, postgres.restart
        finally:
            postgres.close()


async def _enqueue(url: str) -> list[str]:
    async with pywork.connect(url) as broker:
        ids: list[str] = []
        for _ in range(0, JOBS, 1000):
            ids += await broker.enqueue_many([Job("work") for _ in range(1000)])
        return ids


async def _counts(url: str) -> dict[str, int]:
    async with pywork.connect(url) as broker:
        stats = (await broker.stats()).get("default")
    if stats is None:
        return {}
    names = ("queued", "scheduled", "running", "failed", "succeeded", "dead", "cancelled")
    return {name: getattr(stats, name) for name in names}


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("store", ["sqlite", "redis", "postgres"], indirect=True)
def test_chaos_drill(store: Store, tmp_path: Path) -> None:
    url, restart_server = store
    backend = url.split(":", 1)[0]
    side = tmp_path / "runs.txt"
    (tmp_path / "chaosapp.py").write_text(APP)
    ids = set(asyncio.run(_enqueue(url)))
    assert len(ids) == JOBS
    began = time.monotonic()

    # Given three worker processes under the supervisor
    supervisor = subprocess.Popen(
        [
            sys.executable, "-m", "pywork", "worker", "chaosapp:worker",
            "--processes", str(PROCESSES), "--concurrency", str(CONCURRENCY),
            "--lease", "1", "--drain-timeout", "10", "--broker", url, "--log-level", "warning",
        ],
        cwd=tmp_path,
        env={**os.environ, "CHAOS_SIDE": str(side), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: len(children_of(supervisor.pid)) == PROCESSES, 30, "3 children")

        # When a random child is killed every 2-4 s, eight times (and the server restarts)
        restarts = 0
        progress: list[int] = []  # runs recorded at each kill
        for kill in range(1, KILLS + 1):
            time.sleep(random.uniform(2.0, 4.0))  # the drill's own pace
            progress.append(side.stat().st_size // LINE if side.exists() else 0)
            alive = children_of(supervisor.pid)
            if alive:
                os.kill(random.choice(alive), signal.SIGKILL)
            if backend != "sqlite" and kill in (3, 6):
                restart_server()
                restarts += 1
        ran_during_kills = progress[-1]

        # Then every job succeeds
        def settled() -> bool:
            counts = asyncio.run(_counts(url))
            return counts.get("succeeded", 0) + counts.get("dead", 0) >= JOBS

        wait_until(settled, 90, "every job to settle")
        supervisor.send_signal(signal.SIGTERM)
        _, errors = supervisor.communicate(timeout=30)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.communicate(timeout=10)
    assert supervisor.returncode == 0, errors[-3000:]

    runs = Counter(side.read_text().split())
    counts = asyncio.run(_counts(url))
    duplicates = sum(runs.values()) - len(runs)
    print(
        f"\nchaos drill [{backend}]: {JOBS} jobs, {KILLS} kills, {restarts} server restarts, "
        f"{sum(runs.values())} runs, {duplicates} duplicates, "
        f"{len(ids - set(runs))} missing, {counts.get('dead', 0)} dead, "
        f"{ran_during_kills} ran before the last kill, {time.monotonic() - began:.1f}s"
    )
    assert set(runs) == ids, "a job never ran"
    assert counts["succeeded"] == JOBS and counts["dead"] == 0, counts
    assert counts["queued"] == counts["running"] == counts["failed"] == 0, counts
    assert duplicates <= CONCURRENCY * (KILLS + restarts), runs.most_common(5)
    # the work lasts >= 25 s (3 slots, 25 ms a job): at least half the kills hit a busy group
    assert progress[KILLS // 2 - 1] < JOBS, f"the jobs were done before the kills: {progress}"
