"""pywork demo: a ConcurrentJob of 8 ramping workers, jobs with mixed outcomes, live stats.

Each run of the ``demo.call`` handler plays a remote call that succeeds, has nothing to
do (NO_RESPONSE), is rejected (BAD_REQUEST), runs past ``job.timeout`` (TIMEOUT) or
crashes (INTERNAL_ERROR). A small adapter, ``collect``, wraps every run and records
its final status and latency, as an HTTP metrics middleware would; the demo draws a
progress bar while it runs and a table of counts and latency percentiles at the end.

Run it with ``make demo`` or ``python examples/demo.py [--seconds 8] [--workers 8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pywork import (
    Adapter,
    BadRequest,
    ConcurrentJob,
    Handler,
    Job,
    NoResponse,
    PerformWith,
    Status,
    Worker,
)

#: How often each outcome is drawn (weights, not necessarily summing to 1).
OUTCOMES = {
    "success": 0.70,
    "no_response": 0.12,
    "bad_request": 0.07,
    "timeout": 0.05,
    "exception": 0.06,
}
JOB_TIMEOUT = 0.25  # seconds; the "timeout" outcome sleeps longer than this

STYLES = {
    Status.SUCCESS: "green",
    Status.NO_RESPONSE: "cyan",
    Status.BAD_REQUEST: "yellow",
    Status.TIMEOUT: "magenta",
    Status.INTERNAL_ERROR: "red",
}


@dataclass
class Stats:
    """What the ``collect`` adapter records: latencies (seconds) per final status."""

    latencies: dict[Status, list[float]] = field(default_factory=lambda: defaultdict(list))

    @property
    def total(self) -> int:
        """Runs recorded so far."""
        return sum(len(values) for values in self.latencies.values())

    def count(self, *statuses: Status) -> int:
        """Runs that ended with one of `statuses`."""
        return sum(len(self.latencies.get(status, ())) for status in statuses)


def collect(stats: Stats) -> Adapter:
    """An adapter recording each run's final status and latency in `stats`.

    The outcome rules run innermost, so the status is final when ``await inner(job)``
    returns: even a handler that raised or timed out has its status set by then.
    """

    def adapter(inner: Handler) -> Handler:
        async def handler(job: Job) -> None:
            started = time.perf_counter()
            try:
                await inner(job)
            finally:
                assert job.ctx is not None
                stats.latencies[job.ctx.status].append(time.perf_counter() - started)

        return handler

    return adapter


async def call_remote(job: Job) -> None:
    """The demo handler: waits like a network call, then ends with a random outcome."""
    assert job.ctx is not None and job.ctx.worker is not None
    rng: random.Random = job.ctx.worker.session["rng"]
    outcome = rng.choices(list(OUTCOMES), weights=list(OUTCOMES.values()))[0]
    if outcome == "timeout":
        await asyncio.sleep(JOB_TIMEOUT * 4)  # cancelled at job.timeout: TIMEOUT
    await asyncio.sleep(rng.uniform(0.005, 0.08))
    if outcome == "no_response":
        raise NoResponse("nothing new upstream")
    if outcome == "bad_request":
        raise BadRequest("upstream rejected the payload")
    if outcome == "exception":
        raise RuntimeError("upstream connection reset")  # becomes INTERNAL_ERROR


def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile (0-100) of `values` by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def report(stats: Stats, elapsed: float, workers: int) -> Table:
    """The final table: count, share and latency percentiles per status, then a total row."""
    table = Table(
        title=f"pywork demo: {stats.total} jobs in {elapsed:.1f}s on {workers} workers "
        f"({stats.total / elapsed:.1f} jobs/s)",
    )
    table.add_column("status")
    for name in ("count", "share", "p50 ms", "p90 ms", "p99 ms", "max ms"):
        table.add_column(name, justify="right")

    def row(label: str, values: list[float], style: str = "") -> None:
        share = len(values) / stats.total if stats.total else 0.0
        cells = [percentile(values, q) * 1000 for q in (50, 90, 99)] if values else []
        cells.append(max(values) * 1000 if values else 0.0)
        table.add_row(
            label,
            str(len(values)),
            f"{share:.0%}",
            *(f"{value:.1f}" for value in cells) if values else ("-",) * 4,
            style=style,
        )

    for status in sorted(stats.latencies, key=int):
        row(f"{int(status)} {status.name}", stats.latencies[status], STYLES.get(status, ""))
    every = [value for values in stats.latencies.values() for value in values]
    table.add_section()
    row("all", every, "bold")
    return table


async def run(seconds: float, workers: int, seed: int | None, console: Console) -> Stats:
    """Run the ConcurrentJob for `seconds` with a live progress bar; return the stats."""
    stats = Stats()
    rng = random.Random(seed)
    # Unhandled exceptions are logged with their traceback; the table counts them instead.
    quiet = logging.getLogger("pywork.demo")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False

    cj = ConcurrentJob(
        Job("demo.call", timeout=JOB_TIMEOUT),
        worker_factory=lambda: Worker(
            middleware=[collect(stats)], logger=quiet, session={"rng": rng}
        ),
        perform_with=PerformWith.SYNC,
        max_workers=workers,
        start_interval=0.1,
    )
    cj.register("demo.call", call_remote)

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[workers]} workers · {task.fields[line]}"),
        console=console,
        transient=False,
    )
    task = progress.add_task("running", total=seconds, workers=0, line="")
    started = time.monotonic()
    with progress:
        async with cj:
            while (elapsed := time.monotonic() - started) < seconds:
                failed = stats.count(Status.BAD_REQUEST, Status.TIMEOUT, Status.INTERNAL_ERROR)
                progress.update(
                    task,
                    completed=elapsed,
                    workers=cj.running_workers,
                    line=f"{stats.total} jobs, {failed} failed",
                )
                await asyncio.sleep(0.1)
            progress.update(task, description="stopping")
        progress.update(
            task,
            description="done",
            completed=seconds,
            workers=0,
            line=f"{stats.total} jobs",
        )
    return stats


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the demo, print the table; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="how long to run (default 8)")
    parser.add_argument("--workers", type=int, default=8, help="how many workers (default 8)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable runs")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error(f"--seconds must be > 0, got {args.seconds}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")

    console = Console()
    started = time.monotonic()
    stats = asyncio.run(run(args.seconds, args.workers, args.seed, console))
    console.print(report(stats, time.monotonic() - started, args.workers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
