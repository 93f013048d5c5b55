"""perform_every / perform_in / perform_at / perform_receive and the Schedule handle (§4)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import statistics
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from pywork import Channel, Job, Status, Worker
from tests.helpers import Gauge, other_tasks, wait_until

# perform_every ---------------------------------------------------------------------------


async def test_perform_every_has_no_cumulative_drift() -> None:
    interval = 0.02
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def tick(job: Job) -> None:
        starts.append(loop.time())

    async with Worker() as worker:
        worker.register("tick", tick)
        schedule = await worker.perform_every(Job("tick"), interval)
        await wait_until(lambda: len(starts) >= 51, timeout=15, what="51 ticks")
        schedule.cancel()
        await schedule.wait(timeout=5)

    t0 = starts[0]
    errors = [starts[k] - t0 - k * interval for k in range(51)]
    assert min(errors) > -0.005  # never early
    assert max(errors) < 0.25  # each tick near its grid point (generous: shared CPUs)
    # the last tick is still on the grid: lateness does not accumulate
    assert errors[50] < 0.5 * interval + 0.05
    # and the error is not growing: the last ten ticks are as close as the first ten
    growth = statistics.median(errors[41:51]) - statistics.median(errors[1:11])
    assert growth < 0.5 * interval


async def test_perform_every_first_run_is_at_once_and_accepts_a_timedelta() -> None:
    starts: list[float] = []

    async def tick(job: Job) -> None:
        starts.append(time.monotonic())

    async with Worker() as worker:
        worker.register("tick", tick)
        t0 = time.monotonic()
        schedule = await worker.perform_every(Job("tick"), timedelta(seconds=0.1))
        await wait_until(lambda: len(starts) >= 2)
        schedule.cancel()
    assert starts[0] - t0 < 0.05
    assert 0.09 <= starts[1] - starts[0] < 0.5


async def test_perform_every_with_wait_never_overlaps_and_skips_missed_ticks() -> None:
    interval = 0.04
    gauge = Gauge()
    starts: list[float] = []

    async def slow(job: Job) -> None:
        with gauge.track():
            starts.append(time.monotonic())
            await asyncio.sleep(0.05)  # longer than the interval

    async with Worker() as worker:
        worker.register("slow", slow)
        schedule = await worker.perform_every(Job("slow"), interval, wait=True)
        await wait_until(lambda: len(starts) >= 7, timeout=10)
        schedule.cancel()
        await schedule.wait(timeout=5)

    assert gauge.high == 1
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.045  # the next run never starts before the previous ended
    # a run ending at 0.05 s misses the tick at 0.04 s; the next starts at 0.08 s, not at
    # once (catching up) and not at 0.09 s (sleeping an interval after the run)
    assert 0.07 <= statistics.median(gaps) < 0.087


async def test_perform_every_with_wait_runs_every_tick_when_runs_are_short() -> None:
    gauge = Gauge()
    starts: list[float] = []

    async def quick(job: Job) -> None:
        with gauge.track():
            starts.append(time.monotonic())
            await asyncio.sleep(0.005)

    async with Worker() as worker:
        worker.register("quick", quick)
        schedule = await worker.perform_every(Job("quick"), 0.03, wait=True)
        await wait_until(lambda: len(starts) >= 8, timeout=10)
        schedule.cancel()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gauge.high == 1
    assert 0.025 <= statistics.median(gaps) < 0.045


async def test_perform_every_without_wait_overlaps_runs() -> None:
    gauge = Gauge()

    async def slow(job: Job) -> None:
        with gauge.track():
            await asyncio.sleep(0.1)

    async with Worker() as worker:
        worker.register("slow", slow)
        schedule = await worker.perform_every(Job("slow"), 0.02)
        await wait_until(lambda: gauge.total >= 8, timeout=10)
        schedule.cancel()
        await schedule.wait(timeout=5)
    assert gauge.high >= 3
    assert schedule.last is not None


async def test_perform_every_without_wait_is_bounded_by_max_concurrency() -> None:
    gauge = Gauge()

    async def slow(job: Job) -> None:
        with gauge.track():
            await asyncio.sleep(0.05)

    async with Worker(max_concurrency=2) as worker:
        worker.register("slow", slow)
        schedule = await worker.perform_every(Job("slow"), 0.01)
        await wait_until(lambda: gauge.total >= 6, timeout=10)
        schedule.cancel()
    assert gauge.high == 2


async def test_each_periodic_run_gets_a_fresh_copy_of_the_job() -> None:
    seen: list[Job] = []

    async def handler(job: Job) -> None:
        seen.append(job)
        job.args["count"] += 1  # must not leak into the next run

    job = Job("h", {"count": 0}, headers={"h": "v"})
    async with Worker() as worker:
        worker.register("h", handler)
        schedule = await worker.perform_every(job, 0.01)
        await wait_until(lambda: len(seen) >= 5)
        schedule.cancel()
    ids = [j.id for j in seen]
    assert len(set(ids)) == len(ids)
    assert job.id not in ids
    assert all(j.args["count"] == 1 for j in seen)
    assert all(j.headers == {"h": "v"} for j in seen)
    assert job.args == {"count": 0}
    assert job.ctx is None
    assert schedule.job is job
    assert schedule.runs == len(seen)


async def test_cancel_stops_a_periodic_schedule_and_cancels_its_runs() -> None:
    gauge = Gauge()

    async def slow(job: Job) -> None:
        with gauge.track():
            await asyncio.sleep(30)

    async with Worker() as worker:
        worker.register("slow", slow)
        schedule = await worker.perform_every(Job("slow"), 0.02)
        await wait_until(lambda: gauge.total >= 3)
        assert not schedule.done()
        assert schedule.cancel() is True
        assert schedule.cancelled
        await schedule.wait(timeout=5)
        assert schedule.done()
        assert schedule.cancel() is False
        runs = schedule.runs
        await asyncio.sleep(0.1)
        assert schedule.runs == runs  # no more runs
        assert schedule.last is not None
        assert schedule.last.status is Status.CANCELLED
        assert gauge.current == 0
        assert other_tasks() == set()


# perform_in / perform_at --------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0.15, timedelta(milliseconds=150)], ids=["float", "timedelta"])
async def test_perform_in_runs_the_job_itself_once_after_the_delay(delay: Any) -> None:
    started: list[float] = []

    async def handler(job: Job) -> None:
        started.append(time.monotonic())

    async with Worker() as worker:
        worker.register("h", handler)
        job = Job("h")
        t0 = time.monotonic()
        schedule = await worker.perform_in(job, delay)
        assert schedule.job is job
        assert schedule.runs == 0
        assert schedule.last is None
        assert not schedule.done()
        await schedule  # awaitable
    assert len(started) == 1
    assert 0.14 <= started[0] - t0 < 1.5
    assert schedule.done()
    assert schedule.runs == 1
    assert schedule.last is not None
    assert schedule.last.job is job
    assert job.ctx is schedule.last.ctx
    assert schedule.last.status is Status.SUCCESS
    assert not schedule.cancelled
    assert schedule.cancel() is False  # already done


async def test_perform_in_zero_runs_at_once() -> None:
    async with Worker() as worker:
        worker.register("h", lambda job: None)
        t0 = time.monotonic()
        schedule = await worker.perform_in(Job("h"), 0)
        await schedule.wait(timeout=5)
        assert time.monotonic() - t0 < 0.5
    assert schedule.runs == 1


async def test_cancel_before_firing_means_no_run() -> None:
    runs: list[str] = []

    async def handler(job: Job) -> None:
        runs.append(job.id)

    async with Worker() as worker:
        worker.register("h", handler)
        schedule = await worker.perform_in(Job("h"), 0.1)
        assert schedule.cancel() is True
        assert schedule.cancelled
        assert schedule.done()
        await schedule.wait(timeout=1)
        await asyncio.sleep(0.2)
    assert runs == []
    assert schedule.runs == 0
    assert schedule.last is None


async def test_schedule_wait_timeout_raises_without_cancelling() -> None:
    async with Worker() as worker:
        worker.register("h", lambda job: None)
        schedule = await worker.perform_in(Job("h"), 0.2)
        with pytest.raises(TimeoutError):
            await schedule.wait(timeout=0.05)
        with pytest.raises(TimeoutError):
            await schedule.wait(timeout=timedelta(milliseconds=10))
        assert not schedule.cancelled
        await schedule.wait(timeout=5)
    assert schedule.runs == 1


async def test_cancel_a_running_one_shot_schedule() -> None:
    async def forever(job: Job) -> None:
        await asyncio.Event().wait()

    async with Worker() as worker:
        worker.register("forever", forever)
        schedule = await worker.perform_in(Job("forever"), 0)
        await wait_until(lambda: worker.active == 1)
        assert schedule.cancel() is True
        await schedule.wait(timeout=5)
    assert schedule.last is not None
    assert schedule.last.status is Status.CANCELLED


# perform_receive ---------------------------------------------------------------------------


async def _agen(values: list[Any]) -> AsyncIterator[Any]:
    for value in values:
        await asyncio.sleep(0)
        yield value


@pytest.mark.parametrize("kind", ["list", "tuple", "generator", "async-generator", "channel"])
@pytest.mark.parametrize("wait", [True, False])
async def test_perform_receive_runs_a_copy_per_value(kind: str, wait: bool) -> None:
    values = list(range(20))
    received: list[Any] = []
    ids: list[str] = []

    async def handler(job: Job) -> None:
        received.append(job.args["received_data"])
        ids.append(job.id)
        assert job.args["fixed"] == "x"

    source: Any
    if kind == "list":
        source = values
    elif kind == "tuple":
        source = tuple(values)
    elif kind == "generator":
        source = (v for v in values)
    elif kind == "async-generator":
        source = _agen(values)
    else:
        source = Channel()
        for v in values:
            source.send_nowait(v)
        source.close()

    job = Job("h", {"fixed": "x"})
    async with Worker() as worker:
        worker.register("h", handler)
        schedule = await worker.perform_receive(job, source, wait=wait)
        await schedule.wait(timeout=10)
    assert schedule.done()
    assert schedule.runs == 20
    assert sorted(received) == values
    if wait:
        assert received == values
    assert len(set(ids)) == 20 and job.id not in ids
    assert job.args == {"fixed": "x"}  # the template job is untouched
    assert schedule.job is job


async def test_perform_receive_with_wait_is_sequential() -> None:
    gauge = Gauge()
    order: list[int] = []

    async def handler(job: Job) -> None:
        with gauge.track():
            order.append(job.args["received_data"])
            await asyncio.sleep(0.005)

    channel: Channel[int] = Channel()
    async with Worker() as worker:
        worker.register("h", handler)
        schedule = await worker.perform_receive(Job("h"), channel, wait=True)
        for i in range(15):
            await channel.send(i)
        channel.close()
        await schedule.wait(timeout=10)
    assert gauge.high == 1
    assert order == list(range(15))


async def test_perform_receive_with_wait_finishes_each_run_before_receiving_the_next() -> None:
    pulled = 0
    gate = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        nonlocal pulled
        for i in range(5):
            pulled += 1
            yield i

    async def handler(job: Job) -> None:
        await gate.wait()

    async with Worker() as worker:
        worker.register("h", handler)
        schedule = await worker.perform_receive(Job("h"), source(), wait=True)
        await wait_until(lambda: worker.active == 1)
        await asyncio.sleep(0.05)
        assert pulled == 1
        gate.set()
        await schedule.wait(timeout=5)
    assert pulled == 5


async def test_perform_receive_without_wait_is_bounded_and_pauses_receiving() -> None:
    gauge = Gauge()
    gate = asyncio.Event()
    pulled = 0

    async def source() -> AsyncIterator[int]:
        nonlocal pulled
        for i in range(30):
            pulled += 1
            yield i

    async def handler(job: Job) -> None:
        with gauge.track():
            await gate.wait()

    async with Worker(max_concurrency=3) as worker:
        worker.register("h", handler)
        schedule = await worker.perform_receive(Job("h"), source())
        await wait_until(lambda: gauge.current == 3)
        await asyncio.sleep(0.05)
        assert gauge.current == 3
        assert pulled <= 4  # three running, at most one received and waiting for a slot
        gate.set()
        await schedule.wait(timeout=10)
    assert gauge.high == 3
    assert gauge.total == 30
    assert pulled == 30


async def test_perform_receive_without_wait_pauses_a_channel_at_the_bound() -> None:
    gauge = Gauge()
    gate = asyncio.Event()

    async def handler(job: Job) -> None:
        with gauge.track():
            await gate.wait()

    channel: Channel[int] = Channel()
    for i in range(20):
        channel.send_nowait(i)
    channel.close()
    async with Worker(max_concurrency=4) as worker:
        worker.register("h", handler)
        schedule = await worker.perform_receive(Job("h"), channel)
        await wait_until(lambda: gauge.current == 4)
        await asyncio.sleep(0.05)
        assert len(channel) >= 20 - 4 - 1
        gate.set()
        await schedule.wait(timeout=10)
    assert gauge.high == 4
    assert gauge.total == 20
    assert len(channel) == 0


async def test_perform_receive_without_bound_runs_concurrently() -> None:
    gauge = Gauge()

    async def handler(job: Job) -> None:
        with gauge.track():
            await asyncio.sleep(0.05)

    async with Worker() as worker:
        worker.register("h", handler)
        schedule = await worker.perform_receive(Job("h"), range(10))
        await schedule.wait(timeout=10)
    assert gauge.high == 10


async def test_receive_schedule_is_done_once_the_source_is_exhausted_and_runs_finished() -> None:
    finished: list[int] = []

    async def handler(job: Job) -> None:
        await asyncio.sleep(0.05)
        finished.append(job.args["received_data"])

    channel: Channel[int] = Channel()
    async with Worker() as worker:
        worker.register("h", handler)
        schedule = await worker.perform_receive(Job("h"), channel)
        channel.send_nowait(1)
        channel.send_nowait(2)
        await wait_until(lambda: len(finished) == 2)
        await asyncio.sleep(0.02)
        assert not schedule.done()  # the channel is still open
        channel.send_nowait(3)
        channel.close()
        assert not schedule.done()  # run 3 is still going
        await schedule.wait(timeout=5)
        assert schedule.done()
        assert finished == [1, 2, 3]
        assert schedule.runs == 3


async def test_perform_receive_source_that_raises_is_logged_and_ends_the_schedule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    received: list[int] = []

    async def source() -> AsyncIterator[int]:
        yield 1
        raise ValueError("source broke")

    async def handler(job: Job) -> None:
        received.append(job.args["received_data"])

    caplog.set_level(logging.DEBUG, logger="pywork")
    async with Worker() as worker:
        worker.register("h", handler)
        schedule = await worker.perform_receive(Job("h"), source())
        await schedule.wait(timeout=5)
        assert worker.running
    assert received == [1]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "source broke" in errors[0].getMessage()


async def test_cancel_a_receive_schedule() -> None:
    async def forever(job: Job) -> None:
        await asyncio.Event().wait()

    channel: Channel[int] = Channel()
    async with Worker() as worker:
        worker.register("forever", forever)
        schedule = await worker.perform_receive(Job("forever"), channel)
        channel.send_nowait(1)
        await wait_until(lambda: worker.active == 1)
        assert schedule.cancel() is True
        await schedule.wait(timeout=5)
        channel.send_nowait(2)
        await asyncio.sleep(0.05)
    assert schedule.runs == 1
    assert schedule.last is not None
    assert schedule.last.status is Status.CANCELLED
    assert len(channel) == 1  # nothing received after cancel


# stop() cancels every schedule (contract §16) ----------------------------------------


async def test_stop_marks_every_schedule_cancelled_and_done() -> None:
    async def quick(job: Job) -> None:
        pass

    async with Worker() as worker:
        worker.register("quick", quick)
        every = await worker.perform_every(Job("quick"), 3600)
        every_waiting = await worker.perform_every(Job("quick"), 3600, wait=True)
        later = await worker.perform_in(Job("quick"), 3600)
        at = await worker.perform_at(Job("quick"), datetime.now() + timedelta(hours=1))
        channel: Channel[int] = Channel()
        received = await worker.perform_receive(Job("quick"), channel)
        received_waiting = await worker.perform_receive(Job("quick"), channel, wait=True)
        assert every.last is not None and every_waiting.last is not None
        await every.last.wait(timeout=5)
        await every_waiting.last.wait(timeout=5)
        schedules = [every, every_waiting, later, at, received, received_waiting]
        assert not any(s.cancelled or s.done() for s in schedules)
    # `async with` stopped the worker
    for schedule in schedules:
        assert schedule.cancelled, schedule
        assert schedule.done(), schedule
        assert schedule.cancel() is False
        await schedule.wait(timeout=1)
    assert later.runs == 0 and at.runs == 0


async def test_stop_cancels_a_schedule_whose_run_outlives_the_grace_period() -> None:
    started = asyncio.Event()

    async def forever(job: Job) -> None:
        started.set()
        await asyncio.Event().wait()

    worker = Worker()
    worker.register("forever", forever)
    await worker.start()
    schedule = await worker.perform_every(Job("forever"), 3600)
    await asyncio.wait_for(started.wait(), 5)
    await worker.stop(timeout=0.05)
    assert schedule.cancelled
    assert schedule.done()
    assert schedule.last is not None
    assert schedule.last.status is Status.CANCELLED


async def test_a_schedule_done_before_stop_is_not_marked_cancelled() -> None:
    async with Worker() as worker:
        worker.register("h", lambda job: None)
        schedule = await worker.perform_in(Job("h"), 0)
        await schedule.wait(timeout=5)
    assert schedule.done()
    assert not schedule.cancelled  # it finished; stop() had nothing to cancel
