"""adapt, the outcome rules and sync handlers (contract §3)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pywork import (
    Adapter,
    BadRequest,
    Handler,
    Job,
    JobTimeout,
    NoResponse,
    Status,
    Worker,
    adapt,
)
from tests.helpers import pywork_threads, wait_until


def recorder(trace: list[str], name: str) -> Adapter:
    """An adapter appending "name>" before and "<name" after the inner call."""

    def adapter(inner: Handler) -> Handler:
        async def wrapped(job: Job) -> None:
            trace.append(f"{name}>")
            await inner(job)
            trace.append(f"<{name}")

        return wrapped

    return adapter


# composition order -----------------------------------------------------------------


async def test_adapt_order_last_adapter_is_outermost() -> None:
    trace: list[str] = []

    async def handler(job: Job) -> None:
        trace.append("handler")

    a1, a2 = recorder(trace, "a1"), recorder(trace, "a2")
    await adapt(handler, a1, a2)(Job("h"))
    assert trace == ["a2>", "a1>", "handler", "<a1", "<a2"]

    # adapt(h, a1, a2) behaves as a2(a1(h))
    trace.clear()
    await a2(a1(adapt(handler)))(Job("h"))
    assert trace == ["a2>", "a1>", "handler", "<a1", "<a2"]


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=12))
def test_adapt_composition_order_property(count: int) -> None:
    trace: list[str] = []

    async def handler(job: Job) -> None:
        trace.append("handler")

    adapters = [recorder(trace, str(i)) for i in range(count)]
    job = Job("h")

    async def run() -> None:
        await adapt(handler, *adapters)(job)

    asyncio.run(run())
    expected = (
        [f"{i}>" for i in reversed(range(count))] + ["handler"] + [f"<{i}" for i in range(count)]
    )
    assert trace == expected
    assert job.ctx is not None
    assert job.ctx.status is Status.SUCCESS


async def test_adapters_always_receive_an_async_handler() -> None:
    received: list[Handler] = []

    def adapter(inner: Handler) -> Handler:
        received.append(inner)
        return inner

    def sync_handler(job: Job) -> None:
        job.args["ran_in"] = threading.current_thread().name

    job = Job("h")
    await adapt(sync_handler, adapter)(job)
    assert inspect.iscoroutinefunction(received[0])
    assert job.ctx is not None
    assert job.ctx.status is Status.SUCCESS
    assert job.args["ran_in"] != threading.main_thread().name


async def test_adapted_handler_called_directly_makes_a_context() -> None:
    async def handler(job: Job) -> None:
        assert job.ctx is not None
        job.ctx["seen"] = True

    job = Job("h")
    await adapt(handler)(job)
    assert job.ctx is not None
    assert job.ctx["seen"] is True
    assert job.ctx.status is Status.SUCCESS


async def test_sync_handler_returning_an_awaitable_is_awaited() -> None:
    async def work(job: Job) -> None:
        job.args["done"] = True

    job = Job("h")
    await adapt(lambda j: work(j))(job)
    assert job.args["done"] is True
    assert job.ctx is not None
    assert job.ctx.status is Status.SUCCESS


def test_adapt_rejects_what_is_not_callable() -> None:
    async def handler(job: Job) -> None:
        pass

    with pytest.raises(TypeError, match="handler must be"):
        adapt(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="adapter must be"):
        adapt(handler, "not an adapter")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a handler"):
        adapt(handler, lambda inner: None)  # type: ignore[arg-type,return-value]


# outcome rules, as every adapter sees them -------------------------------------------------

# Each case: a handler body (async and sync variants), the job timeout, whether the test
# cancels the run, and the status and error type the adapters must see.


async def _async_body(kind: str, job: Job, started: threading.Event) -> None:
    assert job.ctx is not None
    started.set()
    if kind == "success":
        return
    if kind == "kept":
        job.ctx.status = Status.NO_RESPONSE
        return
    if kind == "job_error":
        raise BadRequest("bad input")
    if kind == "exception":
        raise RuntimeError("boom")
    await asyncio.sleep(30)  # timeout / cancel


def _sync_body(kind: str, job: Job, started: threading.Event) -> None:
    assert job.ctx is not None
    started.set()
    if kind == "success":
        return
    if kind == "kept":
        job.ctx.status = Status.NO_RESPONSE
        return
    if kind == "job_error":
        raise BadRequest("bad input")
    if kind == "exception":
        raise RuntimeError("boom")
    deadline = time.monotonic() + 30
    while not job.ctx.cancelled and time.monotonic() < deadline:  # timeout / cancel
        time.sleep(0.005)


OUTCOMES = [
    ("success", Status.SUCCESS, type(None)),
    ("kept", Status.NO_RESPONSE, type(None)),
    ("job_error", Status.BAD_REQUEST, BadRequest),
    ("exception", Status.INTERNAL_ERROR, RuntimeError),
    ("timeout", Status.TIMEOUT, JobTimeout),
    ("cancel", Status.CANCELLED, asyncio.CancelledError),
]


@pytest.mark.parametrize("flavour", ["async", "sync"])
@pytest.mark.parametrize(("kind", "expected", "error_type"), OUTCOMES, ids=[o[0] for o in OUTCOMES])
async def test_every_adapter_sees_the_final_status(
    flavour: str, kind: str, expected: Status, error_type: type[BaseException]
) -> None:
    seen: list[tuple[str, Status, str | None]] = []
    started = threading.Event()

    def observe(name: str) -> Adapter:
        def adapter(inner: Handler) -> Handler:
            async def wrapped(job: Job) -> None:
                raised: str | None = None
                try:
                    await inner(job)
                except BaseException as exc:
                    raised = type(exc).__name__
                    raise
                finally:
                    assert job.ctx is not None
                    seen.append((name, job.ctx.status, raised))

            return wrapped

        return adapter

    handler: Any
    if flavour == "async":

        async def handler(job: Job) -> None:
            await _async_body(kind, job, started)
    else:

        def handler(job: Job) -> None:
            _sync_body(kind, job, started)

    timeout = 0.1 if kind == "timeout" else None
    async with Worker(middleware=[observe("worker-wide")]) as worker:
        worker.register("h", adapt(handler, observe("per-handler")))
        t0 = time.monotonic()
        execution = await worker.perform(Job("h", timeout=timeout))
        if kind == "cancel":
            await wait_until(started.is_set, what="handler start")
            assert execution.cancel() is True
        status = await execution.wait(timeout=10)
        elapsed = time.monotonic() - t0

    assert status is expected
    assert execution.status is expected
    assert isinstance(execution.error, error_type)
    assert elapsed < 5  # timeouts and cancellations end the run at once
    # only cancellation propagates through the adapters, after the status is set
    raised = "CancelledError" if kind == "cancel" else None
    assert seen == [("per-handler", expected, raised), ("worker-wide", expected, raised)]
    if kind in ("timeout", "cancel"):
        assert execution.ctx.cancelled is True


# exceptions and logging -------------------------------------------------------------------


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_unhandled_exception_is_logged_once_with_traceback(
    flavour: str, caplog: pytest.LogCaptureFixture
) -> None:
    error = ValueError("exploded")
    handler: Any
    if flavour == "async":

        async def handler(job: Job) -> None:
            raise error
    else:

        def handler(job: Job) -> None:
            raise error

    trace: list[str] = []
    caplog.set_level(logging.DEBUG, logger="pywork")
    async with Worker(middleware=[recorder(trace, "m1"), recorder(trace, "m2")]) as worker:
        worker.register("explode", adapt(handler, recorder(trace, "p")))
        job = Job("explode")
        execution = await worker.perform(job, wait=True)

    assert execution.status is Status.INTERNAL_ERROR
    assert execution.error is error
    assert trace == ["m2>", "m1>", "p>", "<p", "<m1", "<m2"]  # nothing propagated
    [record] = _errors(caplog)
    assert record.name == "pywork"
    assert record.exc_info is not None
    assert record.exc_info[1] is error
    assert "exploded" in record.getMessage()
    assert "Traceback" in caplog.text
    assert record.job_id == job.id  # type: ignore[attr-defined]
    assert record.handler == "explode"  # type: ignore[attr-defined]


async def test_job_errors_set_a_status_and_log_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(job: Job) -> None:
        raise NoResponse("nothing to publish")

    caplog.set_level(logging.DEBUG, logger="pywork")
    async with Worker() as worker:
        worker.register("h", handler)
        execution = await worker.perform(Job("h"), wait=True)
    assert execution.status is Status.NO_RESPONSE
    assert isinstance(execution.error, NoResponse)
    assert _errors(caplog) == []


async def test_tracebacks_go_to_the_workers_logger(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(job: Job) -> None:
        raise KeyError("k")

    custom = logging.getLogger("tests.custom.worker")
    caplog.set_level(logging.DEBUG)
    async with Worker(logger=custom) as worker:
        worker.register("h", handler)
        await worker.perform(Job("h"), wait=True)
    [record] = _errors(caplog)
    assert record.name == "tests.custom.worker"
    assert record.exc_info is not None


async def test_status_set_then_exception_gives_internal_error() -> None:
    async def handler(job: Job) -> None:
        assert job.ctx is not None
        job.ctx.status = Status.SUCCESS
        raise RuntimeError("after all")

    async with Worker() as worker:
        worker.register("h", handler)
        execution = await worker.perform(Job("h"), wait=True)
    assert execution.status is Status.INTERNAL_ERROR


async def test_handler_raising_timeout_error_itself_is_an_internal_error() -> None:
    async def handler(job: Job) -> None:
        raise TimeoutError("my own timeout, not the job's")

    async with Worker() as worker:
        worker.register("h", handler)
        with_deadline = await worker.perform(Job("h", timeout=10), wait=True)
        without = await worker.perform(Job("h"), wait=True)
    assert with_deadline.status is Status.INTERNAL_ERROR
    assert without.status is Status.INTERNAL_ERROR
    assert isinstance(with_deadline.error, TimeoutError)


async def test_handler_swallowing_its_timeout_still_times_out() -> None:
    async def handler(job: Job) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return  # a badly behaved handler

    async with Worker() as worker:
        worker.register("h", handler)
        execution = await worker.perform(Job("h", timeout=0.05), wait=True)
    assert execution.status is Status.TIMEOUT
    assert isinstance(execution.error, JobTimeout)


async def test_timeout_error_carries_the_timeout() -> None:
    async def handler(job: Job) -> None:
        await asyncio.sleep(30)

    async with Worker() as worker:
        worker.register("slow", handler)
        execution = await worker.perform(Job("slow", timeout=0.05), wait=True)
    assert isinstance(execution.error, JobTimeout)
    assert execution.error.status is Status.TIMEOUT
    assert "0.05" in str(execution.error)
    assert execution.duration is not None
    assert 0.04 <= execution.duration < 3


# adapters that raise ------------------------------------------------------------------


def raising_adapter(exc: Exception, *, before: bool) -> Adapter:
    def adapter(inner: Handler) -> Handler:
        async def wrapped(job: Job) -> None:
            if before:
                raise exc
            await inner(job)
            raise exc

        return wrapped

    return adapter


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
async def test_adapter_raising_a_job_error_gives_its_status(
    before: bool, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    async def handler(job: Job) -> None:
        calls.append(job.id)

    error = BadRequest("rejected by middleware")
    caplog.set_level(logging.DEBUG, logger="pywork")
    async with Worker(middleware=[raising_adapter(error, before=before)]) as worker:
        worker.register("h", handler)
        execution = await worker.perform(Job("h"), wait=True)
        assert worker.running
    assert execution.status is Status.BAD_REQUEST
    assert execution.error is error
    assert len(calls) == (0 if before else 1)
    assert _errors(caplog) == []


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
async def test_adapter_raising_anything_else_is_recovered_as_internal_error(
    before: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(job: Job) -> None:
        pass

    error = RuntimeError("middleware bug")
    caplog.set_level(logging.DEBUG, logger="pywork")
    async with Worker() as worker:
        worker.register("broken", adapt(handler, raising_adapter(error, before=before)))
        worker.register("fine", handler)
        execution = await worker.perform(Job("broken"), wait=True)
        # the worker keeps going
        assert worker.running
        after = await worker.perform(Job("fine"), wait=True)
    assert execution.status is Status.INTERNAL_ERROR
    assert execution.error is error
    assert after.status is Status.SUCCESS
    [record] = _errors(caplog)
    assert record.exc_info is not None
    assert record.exc_info[1] is error


# sync handlers -----------------------------------------------------------------------------


async def test_sync_handler_runs_in_a_thread_and_does_not_block_the_loop() -> None:
    ticks = 0
    stop_ticking = asyncio.Event()
    thread_names: list[str] = []

    async def ticker() -> None:
        nonlocal ticks
        while not stop_ticking.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    def blocking(job: Job) -> None:
        thread_names.append(threading.current_thread().name)
        time.sleep(0.3)

    async with Worker() as worker:
        worker.register("blocking", blocking)
        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        execution = await worker.perform(Job("blocking"), wait=True)
        during = ticks - before
        stop_ticking.set()
        await ticking
    assert execution.status is Status.SUCCESS
    # 0.3 s at 10 ms per tick is ~30 ticks; a blocked loop would give 1 or 2
    assert during >= 10
    assert thread_names[0].startswith("pywork-")
    assert thread_names[0] != threading.main_thread().name


async def test_sync_handlers_run_in_parallel_threads() -> None:
    barrier = threading.Barrier(3, timeout=5)

    def meet(job: Job) -> None:
        barrier.wait()  # only passes if three threads are in here at once

    async with Worker() as worker:
        worker.register("meet", meet)
        executions = [await worker.perform(Job("meet")) for _ in range(3)]
        statuses = [await e.wait(timeout=10) for e in executions]
    assert statuses == [Status.SUCCESS] * 3


async def test_sync_handler_timeout_ends_the_run_at_once_and_discards_later_writes() -> None:
    release = threading.Event()
    wrote = threading.Event()
    saw_cancelled: list[bool] = []

    def stubborn(job: Job) -> None:
        assert job.ctx is not None
        release.wait(10)  # does not poll ctx.cancelled
        saw_cancelled.append(job.ctx.cancelled)
        job.ctx.status = Status.SUCCESS  # too late: discarded
        job.ctx.set_status(Status.NO_RESPONSE)
        wrote.set()

    async with Worker() as worker:
        worker.register("stubborn", stubborn)
        t0 = time.monotonic()
        execution = await worker.perform(Job("stubborn", timeout=0.1), wait=True)
        elapsed = time.monotonic() - t0
        assert execution.status is Status.TIMEOUT
        assert elapsed < 3  # the thread is still blocked, the run is over
        assert execution.ctx.cancelled is True
        assert isinstance(execution.error, JobTimeout)
        assert execution.done()
        release.set()
        await wait_until(wrote.is_set, what="late write")
        assert execution.status is Status.TIMEOUT
    assert saw_cancelled == [True]
    assert pywork_threads() == []


async def test_sync_handler_cancellation_gives_cancelled_and_the_handler_can_poll() -> None:
    started = threading.Event()
    ended = threading.Event()

    def polite(job: Job) -> None:
        assert job.ctx is not None
        started.set()
        while not job.ctx.cancelled:
            time.sleep(0.005)
        job.ctx.status = Status.SUCCESS  # discarded
        ended.set()

    async with Worker() as worker:
        worker.register("polite", polite)
        execution = await worker.perform(Job("polite"))
        await wait_until(started.is_set)
        assert execution.cancel() is True
        assert await execution.wait(timeout=5) is Status.CANCELLED
        await wait_until(ended.is_set)
        assert execution.status is Status.CANCELLED
        assert isinstance(execution.error, asyncio.CancelledError)


async def test_async_handler_cancellation() -> None:
    started = asyncio.Event()
    cleaned_up: list[bool] = []

    async def handler(job: Job) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            cleaned_up.append(True)

    async with Worker() as worker:
        worker.register("h", handler)
        execution = await worker.perform(Job("h"))
        await asyncio.wait_for(started.wait(), 5)
        assert execution.cancel() is True
        assert await execution is Status.CANCELLED
    assert cleaned_up == [True]
    assert execution.ctx.cancelled is True
    assert isinstance(execution.error, asyncio.CancelledError)
