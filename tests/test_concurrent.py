"""ConcurrentJob: on-ramp, worker numbers, replacement, the six modes, run() and signals (§5)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from types import FrameType
from typing import Any

import pytest

from pywork import (
    Adapter,
    Channel,
    ConcurrentJob,
    Handler,
    HandlerAlreadyRegistered,
    HandlerNotFound,
    Job,
    PerformWith,
    Status,
    Worker,
)
from tests.helpers import Gauge, other_tasks, pywork_threads, wait_until


async def noop(job: Job) -> None:
    pass


# constructor and registration --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"max_workers": 0}, ValueError, "max_workers"),
        ({"max_workers": -2}, ValueError, "max_workers"),
        ({"max_workers": 2.5}, TypeError, "max_workers"),
        ({"perform_with": PerformWith.EVERY_SYNC}, ValueError, "perform_every"),
        ({"perform_with": PerformWith.EVERY_ASYNC}, ValueError, "perform_every"),
        ({"perform_with": PerformWith.RECEIVE_SYNC}, ValueError, "source"),
        ({"perform_with": PerformWith.RECEIVE_ASYNC}, ValueError, "source"),
        ({"perform_with": PerformWith.RECEIVE_SYNC, "source": 42}, TypeError, "source"),
        ({"perform_with": PerformWith.RECEIVE_SYNC, "source": "abc"}, TypeError, "source"),
        ({"perform_with": "sync"}, TypeError, "perform_with"),
        ({"perform_every": 0}, ValueError, "perform_every"),
        ({"start_interval": -1}, ValueError, "start_interval"),
        ({"worker_factory": 42}, TypeError, "worker_factory"),
        ({"logger": "pywork"}, TypeError, "logger"),
    ],
)
def test_constructor_validates(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        ConcurrentJob(Job("h"), **kwargs)


def test_constructor_rejects_a_non_job() -> None:
    with pytest.raises(TypeError, match=r"job must be a pywork\.Job"):
        ConcurrentJob("h")  # type: ignore[arg-type]


def test_valid_mode_combinations_construct() -> None:
    ConcurrentJob(Job("h"), perform_with=PerformWith.EVERY_ASYNC, perform_every=0.5)
    ConcurrentJob(Job("h"), perform_with=PerformWith.RECEIVE_ASYNC, source=[1, 2])
    ConcurrentJob(Job("h"), perform_with=PerformWith.RECEIVE_SYNC, source=Channel())


def test_register_and_handler_decorator() -> None:
    cj = ConcurrentJob(Job("h"))
    cj.register("h", noop)
    with pytest.raises(HandlerAlreadyRegistered):
        cj.register("h", noop)

    @cj.handler("other")
    async def other(job: Job) -> None:
        pass

    @cj.handler()
    def plain(job: Job) -> None:
        pass

    with pytest.raises(ValueError, match="non-empty"):
        cj.register("", noop)
    with pytest.raises(TypeError, match="handler must be"):
        cj.register("x", 42)  # type: ignore[arg-type]


async def test_handlers_registered_after_start_reach_every_worker() -> None:
    gate = asyncio.Event()

    async def handler(job: Job) -> None:
        await gate.wait()

    cj = ConcurrentJob(Job("h"), max_workers=2)
    cj.register("h", handler)
    async with cj:
        await wait_until(lambda: len(cj.workers) == 2)
        cj.register("late", noop)
        assert all("late" in worker for worker in cj.workers)
        execution = await cj.workers[1].perform(Job("late"), wait=True)
        assert execution.status is Status.SUCCESS
        gate.set()


async def test_start_raises_handler_not_found() -> None:
    cj = ConcurrentJob(Job("missing"))
    cj.register("other", noop)
    with pytest.raises(HandlerNotFound, match="'missing'"):
        await cj.start()
    assert cj.running_workers == 0
    assert other_tasks() == set()


async def test_handlers_may_come_from_the_worker_factory_and_its_middleware_applies() -> None:
    trace: list[int | None] = []

    def middleware(inner: Handler) -> Handler:
        async def wrapped(job: Job) -> None:
            assert job.ctx is not None
            trace.append(job.ctx.worker_number)
            await inner(job)

        return wrapped

    adapters: list[Adapter] = [middleware]

    def factory() -> Worker:
        worker = Worker(middleware=adapters)
        worker.register("h", noop)
        return worker

    cj = ConcurrentJob(Job("h"), worker_factory=factory, max_workers=2)
    async with cj:
        await wait_until(lambda: {1, 2} <= set(trace))
    assert set(trace) == {1, 2}


async def test_worker_factory_must_return_workers() -> None:
    cj = ConcurrentJob(Job("h"), worker_factory=lambda: "not a worker")  # type: ignore[arg-type,return-value]
    cj.register("h", noop)
    with pytest.raises(TypeError, match=r"must return a pywork\.Worker"):
        await cj.start()


async def test_a_failing_worker_factory_during_the_ramp_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shared = Worker()
    cj = ConcurrentJob(Job("h"), worker_factory=lambda: shared, max_workers=2)
    cj.register("h", noop)
    caplog.set_level(logging.DEBUG, logger="pywork")
    async with cj:
        await wait_until(lambda: any(r.exc_info for r in caplog.records), what="error logged")
        assert len(cj.workers) == 1  # the first worker goes on
        assert shared.running
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    assert "new Worker" in str(record.exc_info[1])
    assert other_tasks() == set()


# on-ramp, numbering, replacement ---------------------------------------------------------------


async def test_on_ramp_starts_one_worker_per_start_interval() -> None:
    interval = 0.15
    first_start: dict[int, float] = {}
    gate = asyncio.Event()

    async def handler(job: Job) -> None:
        assert job.ctx is not None and job.ctx.worker_number is not None
        first_start.setdefault(job.ctx.worker_number, time.monotonic())
        await gate.wait()

    cj = ConcurrentJob(Job("h"), max_workers=4, start_interval=interval)
    cj.register("h", handler)
    t0 = time.monotonic()
    await cj.start()
    assert time.monotonic() - t0 < interval  # returns once ramp-up has begun
    assert len(cj.workers) == 1
    await wait_until(lambda: len(first_start) == 4, timeout=10)
    assert sorted(first_start) == [1, 2, 3, 4]
    assert cj.running_workers == 4
    await asyncio.sleep(interval * 1.5)
    assert len(cj.workers) == 4  # never more than max_workers
    gate.set()
    await cj.stop()
    for k, started in first_start.items():
        offset = started - t0
        expected = (k - 1) * interval  # worker 1 at once, then one per interval
        assert expected - 0.01 <= offset < expected + 0.4, (k, offset)
    assert cj.running_workers == 0


async def test_sync_mode_replaces_finished_workers_and_never_exceeds_max_workers() -> None:
    gauge = Gauge()
    numbers: Counter[int] = Counter()
    ids: set[str] = set()

    async def handler(job: Job) -> None:
        assert job.ctx is not None and job.ctx.worker_number is not None
        with gauge.track():
            numbers[job.ctx.worker_number] += 1
            ids.add(job.id)
            await asyncio.sleep(0.02)

    template = Job("h")
    cj = ConcurrentJob(template, max_workers=3, start_interval=0.01)
    cj.register("h", handler)
    async with cj:
        await wait_until(lambda: gauge.total >= 20, timeout=10)
    assert gauge.total > 3  # finished workers were replaced
    assert gauge.high <= 3
    assert gauge.high >= 2
    assert set(numbers) == {1, 2, 3}
    assert all(count >= 2 for count in numbers.values())
    assert len(ids) == gauge.total and template.id not in ids  # a fresh copy per run
    assert template.ctx is None


async def test_sync_mode_with_plain_handlers() -> None:
    gauge = Gauge()

    def handler(job: Job) -> None:
        with gauge.track():
            time.sleep(0.01)

    cj = ConcurrentJob(Job("h"), max_workers=2, start_interval=0.0)
    cj.register("h", handler)
    async with cj:
        await wait_until(lambda: gauge.total >= 10, timeout=10)
    assert gauge.high <= 2
    assert pywork_threads() == []


async def test_async_mode_never_has_more_than_max_workers_in_flight() -> None:
    gauge = Gauge()
    numbers: set[int] = set()

    async def handler(job: Job) -> None:
        assert job.ctx is not None and job.ctx.worker_number is not None
        with gauge.track():
            numbers.add(job.ctx.worker_number)
            await asyncio.sleep(0.02)

    cj = ConcurrentJob(
        Job("h"), perform_with=PerformWith.ASYNC, max_workers=3, start_interval=0.005
    )
    cj.register("h", handler)
    async with cj:
        await wait_until(lambda: gauge.total >= 20, timeout=10)
    assert gauge.high <= 3
    assert gauge.total >= 20
    assert numbers == {1, 2, 3}


# EVERY_* -----------------------------------------------------------------------------------------


async def test_every_sync_never_overlaps_per_worker() -> None:
    per_worker: dict[int, Gauge] = defaultdict(Gauge)
    total = Gauge()
    ids: list[str] = []

    async def handler(job: Job) -> None:
        assert job.ctx is not None and job.ctx.worker_number is not None
        ids.append(job.id)
        with per_worker[job.ctx.worker_number].track(), total.track():
            await asyncio.sleep(0.04)  # longer than the interval

    cj = ConcurrentJob(
        Job("h"),
        perform_with=PerformWith.EVERY_SYNC,
        perform_every=0.02,
        max_workers=2,
        start_interval=0.01,
    )
    cj.register("h", handler)
    async with cj:
        await wait_until(lambda: total.total >= 10, timeout=10)
    assert set(per_worker) == {1, 2}
    assert all(g.high == 1 for g in per_worker.values())
    assert total.high <= 2
    assert len(set(ids)) == len(ids)


async def test_every_async_overlaps_runs_of_one_worker() -> None:
    gauge = Gauge()

    async def handler(job: Job) -> None:
        with gauge.track():
            await asyncio.sleep(0.1)

    cj = ConcurrentJob(
        Job("h"), perform_with=PerformWith.EVERY_ASYNC, perform_every=0.02, max_workers=1
    )
    cj.register("h", handler)
    async with cj:
        await wait_until(lambda: gauge.total >= 6, timeout=10)
    assert gauge.high >= 3


# RECEIVE_* ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [PerformWith.RECEIVE_SYNC, PerformWith.RECEIVE_ASYNC])
async def test_receive_modes_handle_each_channel_value_once_and_run_returns(
    mode: PerformWith,
) -> None:
    handled: Counter[int] = Counter()
    numbers: set[int] = set()
    per_worker: dict[int, Gauge] = defaultdict(Gauge)

    async def handler(job: Job) -> None:
        assert job.ctx is not None and job.ctx.worker_number is not None
        with per_worker[job.ctx.worker_number].track():
            numbers.add(job.ctx.worker_number)
            await asyncio.sleep(0.002)
            handled[job.args["received_data"]] += 1

    channel: Channel[int] = Channel(10)
    cj = ConcurrentJob(
        Job("h"),
        # each worker runs at most 2 at once, so one worker cannot take everything at once
        worker_factory=lambda: Worker(max_concurrency=2),
        perform_with=mode,
        source=channel,
        max_workers=3,
        start_interval=0.01,
    )
    cj.register("h", handler)

    async def produce() -> None:
        for i in range(200):
            await channel.send(i)
        channel.close()

    producer = asyncio.create_task(produce())
    await asyncio.wait_for(cj.run(), 15)
    await producer
    assert handled == Counter(range(200))
    assert len(numbers) >= 2
    bound = 1 if mode is PerformWith.RECEIVE_SYNC else 2
    assert all(g.high <= bound for g in per_worker.values())
    assert cj.running_workers == 0
    assert other_tasks() == set()


@pytest.mark.parametrize("kind", ["list", "generator", "async-generator"])
@pytest.mark.parametrize("mode", [PerformWith.RECEIVE_SYNC, PerformWith.RECEIVE_ASYNC])
async def test_receive_modes_share_iterables_between_workers(kind: str, mode: PerformWith) -> None:
    handled: Counter[int] = Counter()

    async def handler(job: Job) -> None:
        await asyncio.sleep(0.001)
        handled[job.args["received_data"]] += 1

    async def agen() -> AsyncIterator[int]:
        for i in range(60):
            await asyncio.sleep(0)
            yield i

    def gen() -> Iterator[int]:
        yield from range(60)

    source: Any = {"list": list(range(60)), "generator": gen(), "async-generator": agen()}[kind]
    cj = ConcurrentJob(Job("h"), perform_with=mode, source=source, max_workers=3)
    cj.register("h", handler)
    await asyncio.wait_for(cj.run(), 15)
    assert handled == Counter(range(60))


async def test_run_returns_promptly_once_the_source_is_exhausted_during_the_ramp() -> None:
    handled: list[int] = []

    async def handler(job: Job) -> None:
        handled.append(job.args["received_data"])

    cj = ConcurrentJob(
        Job("h"),
        perform_with=PerformWith.RECEIVE_SYNC,
        source=[1, 2, 3],
        max_workers=5,
        start_interval=2.0,
    )
    cj.register("h", handler)
    t0 = time.monotonic()
    await asyncio.wait_for(cj.run(), 15)
    assert handled == [1, 2, 3]
    assert time.monotonic() - t0 < 1.0  # not held back by the next on-ramp step
    assert len(cj.workers) == 1  # nothing is started once the source is exhausted
    assert other_tasks() == set()


# run(), stop(), signals --------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_run_stops_on_a_signal_and_restores_the_previous_handlers(
    sig: signal.Signals,
) -> None:
    delivered: list[int] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        delivered.append(signum)

    runs = Gauge()

    async def handler(job: Job) -> None:
        with runs.track():
            await asyncio.sleep(0.01)

    other = signal.SIGINT if sig is signal.SIGTERM else signal.SIGTERM
    saved_sig = signal.signal(sig, previous)
    saved_other = signal.getsignal(other)
    try:
        cj = ConcurrentJob(Job("h"), max_workers=2, start_interval=0.01)
        cj.register("h", handler)
        runner = asyncio.create_task(cj.run())
        # only signal once run() has installed its handler (else `previous` would get it)
        await wait_until(lambda: signal.getsignal(sig) is not previous, what="handler installed")
        await wait_until(lambda: runs.total >= 3)
        os.kill(os.getpid(), sig)
        await asyncio.wait_for(runner, 10)
        assert delivered == []  # run() took the signal
        assert signal.getsignal(sig) is previous  # and restored what was there
        assert signal.getsignal(other) == saved_other
        assert cj.running_workers == 0
        assert runs.current == 0
        assert other_tasks() == set()
        assert all(not w.running for w in cj.workers)
    finally:
        signal.signal(sig, saved_sig)


async def test_stop_ends_run() -> None:
    started = asyncio.Event()

    async def handler(job: Job) -> None:
        started.set()
        await asyncio.sleep(30)

    cj = ConcurrentJob(Job("h"), max_workers=2)
    cj.register("h", handler)
    before = signal.getsignal(signal.SIGTERM)
    runner = asyncio.create_task(cj.run())
    await asyncio.wait_for(started.wait(), 5)
    await cj.stop(timeout=0.05)
    await asyncio.wait_for(runner, 10)
    assert signal.getsignal(signal.SIGTERM) == before
    assert other_tasks() == set()


async def test_stop_cancels_long_runs_and_leaks_nothing() -> None:
    executions: list[Job] = []

    async def handler(job: Job) -> None:
        executions.append(job)
        await asyncio.sleep(30)

    cj = ConcurrentJob(Job("h"), perform_with=PerformWith.ASYNC, max_workers=3)
    cj.register("h", handler)
    await cj.start()
    await wait_until(lambda: cj.running_workers == 3 and len(executions) == 3)
    t0 = time.monotonic()
    await cj.stop(timeout=0.1)
    assert time.monotonic() - t0 < 5
    assert all(j.ctx is not None and j.ctx.status is Status.CANCELLED for j in executions)
    assert cj.running_workers == 0
    assert other_tasks() == set()
    await cj.stop()  # idempotent


async def test_async_with_and_running_workers() -> None:
    gate = asyncio.Event()

    async def handler(job: Job) -> None:
        await gate.wait()

    cj = ConcurrentJob(Job("h"), max_workers=3, start_interval=0.0)
    cj.register("h", handler)
    async with cj as entered:
        assert entered is cj
        await wait_until(lambda: cj.running_workers == 3)
        gate.set()
    assert cj.running_workers == 0
    assert all(not w.running for w in cj.workers)
