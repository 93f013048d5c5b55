"""``pywork demo``: the main job on the embedded default broker, with no set-up.

A temporary SQLite broker, a worker whose handlers succeed, fail then succeed,
reject bad input, time out, or run later; jobs enqueued in batches and consumed with
a live progress bar, then a table of states and statuses and the throughput.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

from pywork.brokers import Broker, JobState, connect
from pywork.errors import BadRequest, Unavailable
from pywork.job import Job
from pywork.status import Status
from pywork.types import Handler
from pywork.worker import Worker

__all__ = ["demo_worker", "run_demo"]

_FINAL = (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED)


def demo_worker(statuses: Counter[Status]) -> Worker:
    """The demo's worker: five handlers with mixed outcomes, counting every status."""

    def count(handler: Handler) -> Handler:
        async def counted(job: Job) -> None:
            try:
                await handler(job)
            finally:
                assert job.ctx is not None
                statuses[job.ctx.status] += 1

        return counted

    worker = Worker(name="demo", middleware=[count])

    @worker.handler("thumbnail")
    async def thumbnail(job: Job) -> None:
        await asyncio.sleep(random.uniform(0.001, 0.01))

    @worker.handler("charge")
    async def charge(job: Job) -> None:
        assert job.ctx is not None
        if job.ctx.attempt == 1:
            raise Unavailable("payment gateway busy", retry_after=0.3)

    @worker.handler("import_row")
    async def import_row(job: Job) -> None:
        if job.args["row"] % 7 == 0:
            raise BadRequest(f"row {job.args['row']} has no email")

    @worker.handler("report")
    async def report(job: Job) -> None:
        await asyncio.sleep(1.0)  # longer than its timeout: TIMEOUT, retried once, then dead

    @worker.handler("reminder")
    def reminder(job: Job) -> None:  # a plain function runs in the thread pool
        time.sleep(0.001)

    return worker


def _jobs(total: int) -> list[tuple[Job, float | None]]:
    jobs: list[tuple[Job, float | None]] = []
    for i in range(total):
        kind = i % 20
        if kind < 12:
            jobs.append((Job("thumbnail", {"image": i}), None))
        elif kind < 15:
            jobs.append((Job("charge", {"order": i}), None))
        elif kind < 18:
            jobs.append((Job("import_row", {"row": i}), None))
        elif kind == 18:
            jobs.append((Job("report", {"n": i}, timeout=0.05, max_retries=1), None))
        else:
            jobs.append((Job("reminder", {"user": i}), 3.0))
    return jobs


async def _enqueue(broker: Broker, jobs: list[tuple[Job, float | None]]) -> None:
    now = [job for job, delay in jobs if delay is None]
    for start in range(0, len(now), 100):
        await broker.enqueue_many(now[start : start + 100])
    for job, delay in jobs:
        if delay is not None:
            await broker.enqueue(job, delay=delay)


async def run_demo(jobs: int = 2000, *, directory: str | None = None) -> int:
    """Run the demo with `jobs` jobs; return the exit status (0)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console()
    statuses: Counter[Status] = Counter()
    with tempfile.TemporaryDirectory(prefix="pywork-demo-", dir=directory) as tmp:
        url = f"sqlite:///{Path(tmp) / 'demo.db'}"
        console.print(f"[bold]pywork demo[/]: {jobs} jobs on {url}")
        async with connect(url) as broker:
            worker = demo_worker(statuses)
            plan = _jobs(jobs)
            started = time.perf_counter()
            await _enqueue(broker, plan)
            enqueued = time.perf_counter() - started
            consumer = asyncio.create_task(
                worker.consume(broker, concurrency=100, max_retries=3, backoff=(0.05, 0.5))
            )
            progress = Progress(
                TextColumn("[bold blue]consuming"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[states]}"),
                TimeElapsedColumn(),
                console=console,
            )
            with progress:
                bar = progress.add_task("jobs", total=jobs, states="")
                while True:
                    stats = (await broker.stats()).get("default")
                    finished = sum(getattr(stats, s.value) for s in _FINAL) if stats else 0
                    states = (
                        f"running {stats.running} scheduled {stats.scheduled} failed {stats.failed}"
                        if stats
                        else ""
                    )
                    progress.update(bar, completed=finished, states=states)
                    if finished >= jobs or consumer.done():
                        break
                    await asyncio.sleep(0.1)
            took = time.perf_counter() - started
            await worker.stop()
            await consumer
            final = (await broker.stats()).get("default")

    table = Table(title="pywork demo: summary")
    table.add_column("what")
    table.add_column("count", justify="right")
    for state in JobState:
        count = getattr(final, state.value) if final else 0
        if count:
            table.add_row(f"state {state.value}", str(count))
    for status, count in sorted(statuses.items()):
        table.add_row(f"status {int(status)} {status.name}", str(count))
    runs = sum(statuses.values())
    table.add_row("runs (attempts)", str(runs))
    table.add_row("enqueue time", f"{enqueued:.2f}s ({jobs / max(enqueued, 1e-9):,.0f} jobs/s)")
    table.add_row("total time (incl. 3 s delays, retries)", f"{took:.2f}s")
    table.add_row("throughput", f"{runs / took:,.0f} runs/s, {jobs / took:,.0f} jobs/s")
    console.print(table)
    return 0
