"""Core throughput and memory of pywork against raw asyncio, in one process.

Prints, for N jobs (``--n``, default 100 000):

- raw asyncio: one task per no-op coroutine, all awaited (the reference rate);
- ``perform(wait=False)`` of a no-op async handler, with 0 and with 4 pass-through
  adapters, then the cost of one adapter: ``(t4 - t0) / 4 / N``;
- ``perform(wait=True)`` one after the other; a plain (sync) no-op handler, which runs
  in the thread pool; ``perform_receive`` over a Channel of N values;
- the memory held by N pending ``perform_in`` schedules (delay one hour).

Each rate is the best of ``--repeat`` runs. The targets are printed next to the
figures; ``--profile`` adds a cProfile of ``perform(wait=False)``.

Run it with ``make bench`` or ``python bench/core.py [--n 100000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import pstats
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable

from pywork import Channel, Handler, Job, Worker

TARGET_RATIO = 0.40  # no-op perform(wait=False) vs raw asyncio
TARGET_ADAPTER_US = 1.0  # per pass-through adapter per job
TARGET_PENDING_MB = 150.0  # 100k pending perform_in schedules

Measure = Callable[[int], Awaitable[float]]


async def noop_coro() -> None:
    """The reference coroutine."""


async def noop(job: Job) -> None:
    """A no-op async handler."""


def noop_sync(job: Job) -> None:
    """A no-op plain handler (runs in the worker's thread pool)."""


def passthrough(inner: Handler) -> Handler:
    """An adapter that only calls the next handler."""

    async def handler(job: Job) -> None:
        await inner(job)

    return handler


def worker(adapters: int = 0) -> Worker:
    """A worker with the no-op handlers and `adapters` pass-through adapters."""
    w = Worker(middleware=[passthrough] * adapters)
    w.register("noop", noop)
    w.register("noop_sync", noop_sync)
    return w


async def raw_asyncio(n: int) -> float:
    """Seconds to create a task per no-op coroutine and await them all."""
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    tasks = [loop.create_task(noop_coro()) for _ in range(n)]
    for task in tasks:
        await task
    return time.perf_counter() - t0


def perform_nowait(adapters: int, handler: str = "noop") -> Measure:
    """Seconds to ``perform(wait=False)`` n new jobs and await their executions."""

    async def measure(n: int) -> float:
        async with worker(adapters) as w:
            t0 = time.perf_counter()
            executions = [await w.perform(Job(handler)) for _ in range(n)]
            for execution in executions:
                await execution
            return time.perf_counter() - t0

    return measure


async def perform_prebuilt(n: int) -> float:
    """Like ``perform_nowait(0)``, with the n Jobs made before the clock starts."""
    async with worker() as w:
        jobs = [Job("noop") for _ in range(n)]
        t0 = time.perf_counter()
        executions = [await w.perform(job) for job in jobs]
        for execution in executions:
            await execution
        return time.perf_counter() - t0


async def perform_wait(n: int) -> float:
    """Seconds to ``perform(wait=True)`` n new jobs one after the other."""
    async with worker() as w:
        t0 = time.perf_counter()
        for _ in range(n):
            await w.perform(Job("noop"), wait=True)
        return time.perf_counter() - t0


def perform_receive(wait: bool) -> Measure:
    """Seconds to run a job for each of n values buffered in a closed Channel."""

    async def measure(n: int) -> float:
        channel: Channel[int] = Channel()
        for value in range(n):
            channel.send_nowait(value)
        channel.close()
        async with worker() as w:
            t0 = time.perf_counter()
            schedule = await w.perform_receive(Job("noop"), channel, wait=wait)
            await schedule
            elapsed = time.perf_counter() - t0
            assert schedule.runs == n, (schedule.runs, n)
            return elapsed

    return measure


def rss_bytes() -> int:
    """The resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


async def pending_perform_in(n: int, *, traced: bool) -> tuple[float, float]:
    """Memory held by n pending ``perform_in`` (1 hour) schedules.

    With `traced`, measured by tracemalloc (exact, but slow and its own bookkeeping
    inflates the RSS); otherwise as the growth of the resident set size.

    Returns:
        (megabytes, seconds to schedule them).
    """
    async with worker() as w:
        gc.collect()
        before = rss_bytes()
        if traced:
            tracemalloc.start()
        t0 = time.perf_counter()
        schedules = [await w.perform_in(Job("noop"), 3600.0) for _ in range(n)]
        elapsed = time.perf_counter() - t0
        if traced:
            held, _peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        else:
            held = rss_bytes() - before
        assert not any(s.done() for s in schedules)
        return held / (1024 * 1024), elapsed


async def best(measure: Measure, n: int, repeat: int) -> float:
    """The fastest of `repeat` runs of `measure` (seconds for n jobs)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        times.append(await measure(n))
    return min(times)


def verdict(ok: bool) -> str:
    """A short mark for a target met or missed."""
    return "ok" if ok else "MISSED"


async def main_async(n: int, repeat: int, profile: bool) -> int:
    """Run every measurement and print the report; return the number of missed targets."""
    rows: list[tuple[str, int, float]] = []

    def show(name: str, count: int, seconds: float) -> None:
        rows.append((name, count, seconds))
        rate = count / seconds
        ratio = rate / (rows[0][1] / rows[0][2])
        print(f"{name:<52} {count:>8,} {rate:>12,.0f}/s {ratio:>7.0%}", flush=True)

    async def line(name: str, measure: Measure, count: int) -> float:
        seconds = await best(measure, count, repeat)
        show(name, count, seconds)
        return seconds

    print(f"pywork core benchmark: N={n:,}, best of {repeat}, Python {sys.version.split()[0]}")
    # Memory first, while the heap is fresh, so the RSS growth is not hidden by reuse.
    rss_mb, took = await pending_perform_in(n, traced=False)
    traced_mb, _ = await pending_perform_in(n, traced=True)
    print(
        f"{n:,} pending perform_in(1 h): RSS +{rss_mb:.1f} MB, {traced_mb:.1f} MB traced "
        f"({traced_mb * 1024 * 1024 / n:.0f} B each), scheduled at {n / took:,.0f}/s\n"
    )
    print(f"{'':<52} {'jobs':>8} {'rate':>14} {'vs raw':>7}")
    # The figures the targets compare are measured in interleaved rounds, so that a burst
    # of load from other processes hits them alike rather than skewing one of them.
    compared: dict[str, Measure] = {
        "raw asyncio (task per no-op coroutine)": raw_asyncio,
        "perform(wait=False), no adapters": perform_nowait(0),
        "perform(wait=False), no adapters, Jobs made before": perform_prebuilt,
        "perform(wait=False), 4 pass-through adapters": perform_nowait(4),
    }
    fastest = {name: float("inf") for name in compared}
    for _ in range(repeat):
        for name, measure in compared.items():
            gc.collect()
            fastest[name] = min(fastest[name], await measure(n))
    for name, seconds in fastest.items():
        show(name, n, seconds)
    t_raw, t0, _, t4 = fastest.values()
    await line("perform(wait=True), sequential", perform_wait, n)
    sync_n = max(1, n // 10)
    await line("perform(wait=False), plain (sync) handler", perform_nowait(0, "noop_sync"), sync_n)
    await line("perform_receive(Channel, wait=False)", perform_receive(False), n)
    await line("perform_receive(Channel, wait=True)", perform_receive(True), n)

    ratio = t_raw / t0
    adapter_us = (t4 - t0) / 4 / n * 1e6
    pending_mb = max(traced_mb, rss_mb) * 100_000 / n
    checks = [
        (ratio >= TARGET_RATIO, f"no-op perform(wait=False) at {ratio:.1%} of raw asyncio"),
        (adapter_us < TARGET_ADAPTER_US, f"one pass-through adapter costs {adapter_us:.2f} µs"),
        (pending_mb < TARGET_PENDING_MB, f"100k pending perform_in hold {pending_mb:.1f} MB"),
    ]
    targets = (
        f">= {TARGET_RATIO:.0%}",
        f"< {TARGET_ADAPTER_US:g} µs",
        f"< {TARGET_PENDING_MB:g} MB",
    )
    print("\ntargets:")
    for (ok, text), target in zip(checks, targets, strict=True):
        print(f"  [{verdict(ok):>6}] {text} (target {target})")

    if profile:
        print("\ncProfile of perform(wait=False), no adapters:")
        profiler = cProfile.Profile()
        profiler.enable()
        await perform_nowait(0)(n)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        print(out.getvalue())
    return sum(not ok for ok, _ in checks)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run the benchmark; exit 0 (missed targets are printed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="jobs per measurement (100000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, best kept")
    parser.add_argument("--profile", action="store_true", help="cProfile perform(wait=False)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1:
        parser.error("--n and --repeat must be >= 1")
    asyncio.run(main_async(args.n, args.repeat, args.profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
