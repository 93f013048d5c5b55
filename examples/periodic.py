"""Periodic work: 50 workers each running a job every interval, started 50 ms apart.

A port of go-work's seed scenario: a ConcurrentJob with ``PerformWith.EVERY_SYNC``,
50 workers and a 50 ms on-ramp (``start_interval=0.05``). Each worker runs the job at
once and then on a fixed grid (``start + k*interval`` on the monotonic clock), never
overlapping its own previous run. After ``--seconds`` the ConcurrentJob is stopped and
the number of runs of each worker is printed: early workers did more runs than late ones.

Run it with ``python examples/periodic.py [--seconds 3] [--every 0.5] [--workers 50]``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter

from pywork import ConcurrentJob, Job, PerformWith


async def run(seconds: float, every: float, workers: int) -> Counter[int]:
    """Run the periodic ConcurrentJob for `seconds`; return the runs per worker number."""
    runs: Counter[int] = Counter()

    async def tick(job: Job) -> None:
        assert job.ctx is not None and job.ctx.worker_number is not None
        runs[job.ctx.worker_number] += 1
        await asyncio.sleep(0.001)  # the periodic work itself

    cj = ConcurrentJob(
        Job("tick"),
        perform_with=PerformWith.EVERY_SYNC,
        perform_every=every,
        max_workers=workers,
        start_interval=0.05,
    )
    cj.register("tick", tick)
    async with cj:
        await asyncio.sleep(seconds)
    return runs


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run, print the runs of each worker; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to run (default 3)")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between runs (0.5)")
    parser.add_argument("--workers", type=int, default=50, help="how many workers (default 50)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.every <= 0:
        parser.error("--seconds and --every must be > 0")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")

    runs = asyncio.run(run(args.seconds, args.every, args.workers))
    print(
        f"{sum(runs.values())} runs by {len(runs)} workers in {args.seconds:g}s "
        f"(every {args.every:g}s, one more worker every 0.05s)"
    )
    cells = [f"worker {number:2d}: {runs[number]:3d} runs" for number in sorted(runs)]
    for start in range(0, len(cells), 5):
        print("   ".join(cells[start : start + 5]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
