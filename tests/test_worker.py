"""Worker: registration, middleware, session, perform, Execution, concurrency, stop (§4)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from pywork import (
    Adapter,
    Channel,
    Execution,
    Handler,
    HandlerAlreadyRegistered,
    HandlerNotFound,
    Job,
    Status,
    Worker,
    WorkerNotRunning,
    adapt,
)
from tests.helpers import Gauge, other_tasks, pywork_threads, wait_until


async def noop(job: Job) -> None:
    pass


def recorder(trace: list[str], name: str) -> Adapter:
    def adapter(inner: Handler) -> Handler:
        async def wrapped(job: Job) -> None:
            trace.append(name)
            await inner(job)

        return wrapped

    return adapter


# registration -----------------------------------------------------------------------


def test_register_and_decorators() -> None:
    worker = Worker()
    worker.register("explicit", noop)

    @worker.handler
    async def bare(job: Job) -> None:
        pass

    @worker.handler()
    def called_without_name(job: Job) -> None:
        pass

    @worker.handler("email.send")
    async def named(job: Job) -> None:
        pass

    # the decorators return a Task that calls and names the function
    assert callable(bare)
    assert bare.__name__ == "bare"
    assert worker.handlers == ["explicit", "bare", "called_without_name", "email.send"]
    assert "email.send" in worker
    assert "named" not in worker


def test_registering_a_name_twice_fails() -> None:
    worker = Worker()
    worker.register("h", noop)
    with pytest.raises(HandlerAlreadyRegistered, match="'h'"):
        worker.register("h", noop)
    with pytest.raises(HandlerAlreadyRegistered):

        @worker.handler("h")
        async def again(job: Job) -> None:
            pass

    with pytest.raises(ValueError):  # HandlerAlreadyRegistered is a ValueError
        worker.register("h", noop)


@pytest.mark.parametrize(
    ("name", "handler", "exc", "match"),
    [
        ("", noop, ValueError, "non-empty"),
        (42, noop, TypeError, "handler name must be a str"),
        (None, noop, TypeError, "handler name must be a str"),
        ("h", 42, TypeError, "handler must be an async or plain function"),
        ("h", "noop", TypeError, "handler must be an async or plain function"),
    ],
)
def test_register_validates_its_arguments(
    name: Any, handler: Any, exc: type[Exception], match: str
) -> None:
    worker = Worker()
    with pytest.raises(exc, match=match):
        worker.register(name, handler)
    assert worker.handlers == []


def test_handler_decorator_rejects_a_non_str_name() -> None:
    with pytest.raises(TypeError, match="handler name"):
        Worker().handler(42)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"max_concurrency": 0}, ValueError, "max_concurrency"),
        ({"max_concurrency": -3}, ValueError, "max_concurrency"),
        ({"max_concurrency": 1.5}, TypeError, "max_concurrency"),
        ({"middleware": [42]}, TypeError, "adapter"),
        ({"middleware": "abc"}, TypeError, "middleware"),
        ({"session": [("a", 1)]}, TypeError, "session"),
        ({"logger": "pywork"}, TypeError, "logger"),
        ({"name": ""}, ValueError, "name"),
    ],
)
def test_worker_constructor_validates(
    kwargs: dict[str, Any], exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        Worker(**kwargs)


async def test_register_works_after_start() -> None:
    async with Worker() as worker:
        worker.register("late", noop)
        execution = await worker.perform(Job("late"), wait=True)
    assert execution.status is Status.SUCCESS


async def test_use_only_before_start() -> None:
    worker = Worker()
    worker.use(recorder([], "a"))
    with pytest.raises(TypeError, match="adapter"):
        worker.use(42)  # type: ignore[arg-type]
    await worker.start()
    with pytest.raises(RuntimeError, match="before the worker starts"):
        worker.use(recorder([], "b"))
    await worker.stop()
    with pytest.raises(RuntimeError):
        worker.use(recorder([], "c"))


# middleware and session ---------------------------------------------------------------


async def test_worker_middleware_is_outside_per_handler_adapters_in_call_order() -> None:
    trace: list[str] = []

    async def handler(job: Job) -> None:
        trace.append("handler")

    worker = Worker(middleware=[recorder(trace, "m1"), recorder(trace, "m2")])
    worker.use(recorder(trace, "u1"))
    worker.use(recorder(trace, "u2"), recorder(trace, "u3"))
    worker.register("h", adapt(handler, recorder(trace, "p1"), recorder(trace, "p2")))
    async with worker:
        worker.register("late", adapt(handler, recorder(trace, "p1")))
        await worker.perform(Job("h"), wait=True)
        first = list(trace)
        trace.clear()
        await worker.perform(Job("late"), wait=True)
    assert first == ["u3", "u2", "u1", "m2", "m1", "p2", "p1", "handler"]
    # handlers registered after start get the worker middleware too
    assert trace == ["u3", "u2", "u1", "m2", "m1", "p1", "handler"]


async def test_session_is_reachable_from_the_handler() -> None:
    pool = object()
    seen: list[Any] = []

    async def handler(job: Job) -> None:
        assert job.ctx is not None and job.ctx.worker is not None
        seen.append(job.ctx.worker.session["pool"])

    def sync_handler(job: Job) -> None:
        assert job.ctx is not None and job.ctx.worker is not None
        seen.append(job.ctx.worker.session.get("pool"))

    async with Worker(session={"pool": pool}) as worker:
        worker.register("h", handler)
        worker.register("s", sync_handler)
        await worker.perform(Job("h"), wait=True)
        await worker.perform(Job("s"), wait=True)
    assert seen == [pool, pool]
    assert Worker().session == {}


# lifecycle ----------------------------------------------------------------------------


async def test_performing_before_start_and_after_stop_raises_worker_not_running() -> None:
    worker = Worker()
    worker.register("h", noop)
    assert not worker.running
    with pytest.raises(WorkerNotRunning, match="not running"):
        await worker.perform(Job("h"))
    await worker.start()
    assert worker.running
    await worker.perform(Job("h"), wait=True)
    await worker.stop()
    assert not worker.running
    job = Job("h")
    for attempt in (
        worker.perform(job),
        worker.perform_every(job, 1),
        worker.perform_in(job, 1),
        worker.perform_at(job, datetime.now(UTC)),
        worker.perform_receive(job, [1]),
    ):
        with pytest.raises(WorkerNotRunning):
            await attempt
    await worker.stop()  # idempotent


async def test_async_with_starts_and_stops_waiting_for_runs() -> None:
    async def slow(job: Job) -> None:
        await asyncio.sleep(0.05)

    async with Worker() as worker:
        assert worker.running
        worker.register("slow", slow)
        execution = await worker.perform(Job("slow"))
    assert not worker.running
    assert execution.status is Status.SUCCESS
    assert other_tasks() == set()


async def test_unknown_handler_raises_handler_not_found_for_every_perform() -> None:
    async with Worker() as worker:
        worker.register("known", noop)
        job = Job("unknown")
        for attempt in (
            worker.perform(job),
            worker.perform_every(job, 1),
            worker.perform_in(job, 1),
            worker.perform_at(job, datetime.now(UTC)),
            worker.perform_receive(job, [1]),
        ):
            with pytest.raises(HandlerNotFound, match=r"'unknown'.*'known'"):
                await attempt
        assert job.ctx is None


async def test_argument_validation_messages() -> None:
    runs: list[str] = []

    async def handler(job: Job) -> None:
        runs.append(job.id)

    async with Worker() as worker:
        worker.register("h", handler)
        job = Job("h")
        with pytest.raises(TypeError, match=r"expected a pywork\.Job"):
            await worker.perform("h")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"delay must be >= 0"):
            await worker.perform_in(job, -1)
        with pytest.raises(ValueError, match=r"delay must be >= 0"):
            await worker.perform_in(job, timedelta(seconds=-1))
        with pytest.raises(TypeError, match="delay must be a number of seconds"):
            await worker.perform_in(job, "1")  # type: ignore[arg-type]
        for interval in (0, -1, 0.0, timedelta(0)):
            with pytest.raises(ValueError, match=r"interval must be > 0"):
                await worker.perform_every(job, interval)
        with pytest.raises(ValueError, match="interval must be a finite"):
            await worker.perform_every(job, float("inf"))
        for source in (42, "abc", b"abc", None, object()):
            with pytest.raises(TypeError, match=r"source must be a pywork\.Channel"):
                await worker.perform_receive(job, source)  # type: ignore[arg-type]
        for when in ("2030-01-01", 1234.5, None):
            with pytest.raises(TypeError, match="when must be a datetime"):
                await worker.perform_at(job, when)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            await worker.stop(-1)
        assert worker.running
        await asyncio.sleep(0.05)
    assert runs == []  # nothing ran after a rejected call


# perform and Execution -----------------------------------------------------------------


async def test_perform_without_wait_returns_at_once() -> None:
    gate = asyncio.Event()

    async def gated(job: Job) -> None:
        await gate.wait()

    async with Worker() as worker:
        worker.register("gated", gated)
        job = Job("gated")
        execution = await worker.perform(job)
        assert execution.job is job
        assert job.ctx is execution.ctx
        assert not execution.done()
        assert execution.status is Status.UNKNOWN
        assert execution.started_at is None
        assert execution.finished_at is None
        assert execution.duration is None
        await wait_until(lambda: worker.active == 1)
        assert execution.started_at is not None
        gate.set()
        assert await execution is Status.SUCCESS
        assert worker.active == 0


async def test_perform_with_wait_returns_the_finished_execution() -> None:
    async def slow(job: Job) -> None:
        await asyncio.sleep(0.05)
        assert job.ctx is not None
        job.ctx.status = Status.NO_RESPONSE

    async with Worker() as worker:
        worker.register("slow", slow)
        job = Job("slow")
        before = datetime.now(UTC)
        execution = await worker.perform(job, wait=True)
        after = datetime.now(UTC)
    assert execution.done()
    assert execution.status is Status.NO_RESPONSE
    assert execution.error is None
    assert job.ctx is execution.ctx
    started, finished = execution.started_at, execution.finished_at
    assert started is not None and finished is not None
    assert started.tzinfo is not None and finished.tzinfo is not None
    assert before - timedelta(seconds=0.01) <= started <= finished
    assert finished <= after + timedelta(seconds=0.01)
    assert execution.duration is not None
    assert 0.04 <= execution.duration < 3
    assert abs((finished - started).total_seconds() - execution.duration) < 0.001
    assert execution.cancel() is False  # done
    assert execution.status is Status.NO_RESPONSE


async def test_handler_failures_are_never_raised_by_perform() -> None:
    async def broken(job: Job) -> None:
        raise RuntimeError("nope")

    async with Worker() as worker:
        worker.register("broken", broken)
        execution = await worker.perform(Job("broken"), wait=True)
    assert execution.status is Status.INTERNAL_ERROR
    assert isinstance(execution.error, RuntimeError)


async def test_wait_timeout_raises_without_cancelling() -> None:
    gate = asyncio.Event()

    async def gated(job: Job) -> None:
        await gate.wait()

    async with Worker() as worker:
        worker.register("gated", gated)
        execution = await worker.perform(Job("gated"))
        with pytest.raises(TimeoutError):
            await execution.wait(timeout=0.05)
        with pytest.raises(TimeoutError):
            await execution.wait(timeout=timedelta(milliseconds=20))
        assert not execution.done()
        assert execution.status is Status.UNKNOWN
        gate.set()
        assert await execution.wait(timeout=5) is Status.SUCCESS
        assert await execution is Status.SUCCESS  # awaiting again is fine


async def test_cancelling_the_waiter_does_not_cancel_the_execution() -> None:
    gate = asyncio.Event()

    async def gated(job: Job) -> None:
        await gate.wait()

    async with Worker() as worker:
        worker.register("gated", gated)
        execution = await worker.perform(Job("gated"))
        waiter = asyncio.create_task(execution.wait())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not execution.done()
        gate.set()
        assert await execution is Status.SUCCESS


async def test_cancel_returns_true_then_false() -> None:
    async def forever(job: Job) -> None:
        await asyncio.Event().wait()

    async with Worker() as worker:
        worker.register("forever", forever)
        execution = await worker.perform(Job("forever"))
        await wait_until(lambda: worker.active == 1)
        assert execution.cancel() is True
        assert await execution is Status.CANCELLED
        assert execution.cancel() is False
        assert execution.finished_at is not None


async def test_awaiting_an_execution_cancelled_before_it_started_returns_cancelled() -> None:
    ran: list[str] = []

    async def handler(job: Job) -> None:
        ran.append(job.id)

    async with Worker() as worker:
        worker.register("h", handler)
        waits: list[Callable[[Execution], Awaitable[Status]]] = [
            lambda e: e,  # await execution
            lambda e: e.wait(),
            lambda e: e.wait(timeout=5),
        ]
        for wait in waits:
            execution = await worker.perform(Job("h"))
            assert execution.cancel() is True  # before its first step
            assert await wait(execution) is Status.CANCELLED
            assert execution.done()
            assert execution.ctx.cancelled is True
            assert execution.started_at is None
    assert ran == []


# max_concurrency --------------------------------------------------------------------------


async def test_max_concurrency_is_never_exceeded_and_excess_runs_start_in_order() -> None:
    gauge = Gauge()
    order: list[int] = []
    gates = [asyncio.Event() for _ in range(10)]

    async def handler(job: Job) -> None:
        with gauge.track():
            order.append(job.args["i"])
            await gates[job.args["i"]].wait()

    async with Worker(max_concurrency=3) as worker:
        worker.register("h", handler)
        executions = [await worker.perform(Job("h", {"i": i})) for i in range(10)]
        await wait_until(lambda: len(order) == 3)
        await asyncio.sleep(0.02)
        assert order == [0, 1, 2]
        assert worker.active == 3
        # release in reverse of start order: the waiting runs still start FIFO
        for i in (2, 0, 1, 5, 3, 4, 8, 6, 7, 9):
            await wait_until(lambda i=i: i in order, what=f"run {i} started")  # type: ignore[misc]
            gates[i].set()
        for execution in executions:
            assert await execution.wait(timeout=5) is Status.SUCCESS
    assert order == list(range(10))
    assert gauge.high == 3


async def test_max_concurrency_bounds_sync_and_async_handlers_together() -> None:
    gauge = Gauge()

    async def async_handler(job: Job) -> None:
        with gauge.track():
            await asyncio.sleep(0.01)

    def sync_handler(job: Job) -> None:
        with gauge.track():
            time.sleep(0.01)

    async with Worker(max_concurrency=4) as worker:
        worker.register("a", async_handler)
        worker.register("s", sync_handler)
        executions = [await worker.perform(Job("a" if i % 2 else "s")) for i in range(40)]
        statuses = [await e.wait(timeout=10) for e in executions]
    assert statuses == [Status.SUCCESS] * 40
    assert gauge.total == 40
    assert 2 <= gauge.high <= 4


async def test_cancelling_a_waiting_execution_never_runs_it_and_keeps_the_bound() -> None:
    gate = asyncio.Event()
    ran: list[int] = []

    async def handler(job: Job) -> None:
        ran.append(job.args["i"])
        await gate.wait()

    async with Worker(max_concurrency=1) as worker:
        worker.register("h", handler)
        first = await worker.perform(Job("h", {"i": 1}))
        second = await worker.perform(Job("h", {"i": 2}))
        third = await worker.perform(Job("h", {"i": 3}))
        await wait_until(lambda: ran == [1])
        assert second.cancel() is True
        assert await second.wait(timeout=5) is Status.CANCELLED
        assert second.started_at is None
        await asyncio.sleep(0.02)
        assert ran == [1]  # the slot is still held by the first run
        assert worker.active == 1
        gate.set()
        assert await first.wait(timeout=5) is Status.SUCCESS
        assert await third.wait(timeout=5) is Status.SUCCESS
    assert ran == [1, 3]


async def test_time_waiting_for_a_slot_does_not_count_against_the_timeout() -> None:
    async def handler(job: Job) -> None:
        await asyncio.sleep(job.args["sleep"])

    async with Worker(max_concurrency=1) as worker:
        worker.register("h", handler)
        first = await worker.perform(Job("h", {"sleep": 0.2}))
        second = await worker.perform(Job("h", {"sleep": 0.01}, timeout=0.1))
        assert await second.wait(timeout=5) is Status.SUCCESS
        assert await first is Status.SUCCESS


# stop ---------------------------------------------------------------------------------------


async def test_stop_waits_for_short_runs_cancels_long_ones_and_leaks_nothing() -> None:
    assert other_tasks() == set()
    polled = threading.Event()

    async def short(job: Job) -> None:
        await asyncio.sleep(0.05)

    async def long(job: Job) -> None:
        await asyncio.sleep(60)

    def sync_long(job: Job) -> None:
        assert job.ctx is not None
        deadline = time.monotonic() + 60
        while not job.ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.005)
        polled.set()

    def sync_short(job: Job) -> None:
        time.sleep(0.05)

    worker = Worker(name="stoptest")
    worker.register("short", short)
    worker.register("long", long)
    worker.register("sync_long", sync_long)
    worker.register("sync_short", sync_short)
    await worker.start()
    short_run = await worker.perform(Job("short"))
    sync_short_run = await worker.perform(Job("sync_short"))
    long_run = await worker.perform(Job("long"))
    sync_long_run = await worker.perform(Job("sync_long"))
    every = await worker.perform_every(Job("short"), 0.01)
    later = await worker.perform_in(Job("short"), 60)
    at = await worker.perform_at(Job("short"), datetime.now(UTC) + timedelta(hours=1))
    channel: Channel[int] = Channel()
    received = await worker.perform_receive(Job("short"), channel)
    channel.send_nowait(1)
    await wait_until(lambda: worker.active >= 4)

    t0 = time.monotonic()
    await worker.stop(timeout=0.3)
    elapsed = time.monotonic() - t0

    assert 0.25 <= elapsed < 5
    assert short_run.status is Status.SUCCESS
    assert sync_short_run.status is Status.SUCCESS
    assert long_run.status is Status.CANCELLED
    assert sync_long_run.status is Status.CANCELLED
    assert polled.is_set()
    for schedule in (every, later, at, received):
        assert schedule.done()
    assert later.runs == 0 and at.runs == 0
    assert every.runs >= 1
    assert received.runs == 1
    assert received.last is not None and received.last.status is Status.SUCCESS
    assert worker.active == 0
    assert other_tasks() == set()
    assert pywork_threads() == []
    with pytest.raises(WorkerNotRunning):
        await worker.perform(Job("short"))


async def test_stop_with_nothing_running_returns_at_once() -> None:
    worker = Worker()
    await worker.stop()  # never started: nothing to do
    await worker.start()
    t0 = time.monotonic()
    await worker.stop(timeout=10)
    assert time.monotonic() - t0 < 1
    assert other_tasks() == set()


async def test_concurrent_stops_both_wait_for_the_end() -> None:
    async def slow(job: Job) -> None:
        await asyncio.sleep(0.1)

    worker = Worker()
    worker.register("slow", slow)
    await worker.start()
    execution = await worker.perform(Job("slow"))
    await asyncio.gather(worker.stop(), worker.stop())
    assert execution.done()
    assert execution.status is Status.SUCCESS


# perform_at: naive datetimes are local time -------------------------------------------------


@pytest.fixture
def india_time() -> Iterator[None]:
    """Run the test with the process's local time at UTC+05:30."""
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "UTC-05:30"  # POSIX: 5h30 east of UTC
    time.tzset()
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = previous
        time.tzset()


@pytest.mark.usefixtures("india_time")
@pytest.mark.parametrize(
    "make_when",
    [
        pytest.param(lambda d: datetime.now() + d, id="naive-local"),
        pytest.param(lambda d: datetime.now(UTC) + d, id="aware-utc"),
        pytest.param(lambda d: datetime.now(timezone(timedelta(hours=-7))) + d, id="aware-minus-7"),
    ],
)
async def test_perform_at_runs_at_the_given_time(make_when: Any) -> None:
    assert time.strftime("%z") == "+0530"
    started: list[float] = []

    async def handler(job: Job) -> None:
        started.append(time.monotonic())

    async with Worker() as worker:
        worker.register("h", handler)
        job = Job("h")
        t0 = time.monotonic()
        schedule = await worker.perform_at(job, make_when(timedelta(seconds=0.3)))
        await schedule.wait(timeout=5)
    assert len(started) == 1
    assert 0.25 <= started[0] - t0 < 2.0
    assert schedule.last is not None
    assert schedule.last.job is job  # the job itself, not a copy


@pytest.mark.usefixtures("india_time")
@pytest.mark.parametrize(
    "when",
    [
        pytest.param(lambda: datetime.now() - timedelta(hours=1), id="naive-past"),
        pytest.param(lambda: datetime.now(UTC) - timedelta(days=3), id="aware-past"),
    ],
)
async def test_perform_at_a_past_time_runs_at_once(when: Any) -> None:
    async with Worker() as worker:
        worker.register("h", noop)
        t0 = time.monotonic()
        schedule = await worker.perform_at(Job("h"), when())
        await schedule.wait(timeout=5)
        assert time.monotonic() - t0 < 1.0
    assert schedule.runs == 1
    assert schedule.last is not None and schedule.last.status is Status.SUCCESS
