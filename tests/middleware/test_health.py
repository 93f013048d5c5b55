"""HealthCheck and with_health_check: window and last-N modes, min_requests, tick, threads."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest

from pywork import Job, JobError, Status, Worker
from pywork.middleware import HealthCheck, with_health_check
from pywork.middleware.health import HealthSnapshot


class Clock:
    """A manual monotonic clock, so window and tick behaviour is exact without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(health: HealthCheck, ok: int = 0, failed: int = 0) -> None:
    for _ in range(ok):
        health.record(Status.SUCCESS)
    for _ in range(failed):
        health.record(Status.INTERNAL_ERROR)


def test_default_never_trips() -> None:
    # go-work's default error percentage is 100 %: a share cannot exceed it
    health = HealthCheck(tick=0)
    record(health, failed=50)
    assert health.status == 200
    assert health.status is Status.SUCCESS
    assert health.healthy


def test_window_mode_trips_above_the_threshold_and_recovers_when_errors_age_out() -> None:
    clock = Clock()
    health = HealthCheck(error_percentage=0.5, window=60.0, min_requests=4, tick=0, clock=clock)
    record(health, ok=2, failed=2)  # exactly 50 %: not above the threshold
    assert health.status == 200
    health.record(Status.TIMEOUT)  # 3/5 = 60 %
    assert health.status == 500
    assert not health.healthy
    assert health.snapshot() == HealthSnapshot(Status.INTERNAL_ERROR, 5, 3)
    # When the window has passed, the old errors no longer count
    clock.now += 61.0
    assert health.status == 200
    assert health.snapshot().requests == 0
    record(health, ok=4)
    assert health.snapshot() == HealthSnapshot(Status.SUCCESS, 4, 0)


def test_window_mode_keeps_errors_inside_the_window() -> None:
    clock = Clock()
    health = HealthCheck(error_percentage=0.5, window=60.0, min_requests=1, tick=0, clock=clock)
    record(health, failed=3)
    clock.now += 30.0  # half the window later they still count
    record(health, ok=2)
    assert health.snapshot() == HealthSnapshot(Status.INTERNAL_ERROR, 5, 3)


def test_last_n_mode_counts_only_the_last_requests() -> None:
    clock = Clock()
    health = HealthCheck(error_percentage=0.5, last_requests=4, min_requests=4, tick=0, clock=clock)
    record(health, failed=3)
    assert health.status == 200  # 3 requests < min_requests
    health.record(Status.SUCCESS)
    assert health.status == 500  # 3 of the last 4 failed
    clock.now += 10_000.0  # time does not matter in this mode
    assert health.status == 500
    record(health, ok=2)  # the last 4: fail, success, success, success
    assert health.snapshot() == HealthSnapshot(Status.SUCCESS, 4, 1)
    record(health, failed=3)
    assert health.snapshot() == HealthSnapshot(Status.INTERNAL_ERROR, 4, 3)


def test_min_requests_protects_a_quiet_worker() -> None:
    health = HealthCheck(error_percentage=0.1, min_requests=5, tick=0)
    record(health, failed=4)
    assert health.status == 200
    health.record(Status.UNAVAILABLE)
    assert health.status == 500


def test_only_is_error_statuses_count_as_failures() -> None:
    health = HealthCheck(error_percentage=0.0, min_requests=1, tick=0)
    for status in (Status.BAD_REQUEST, Status.NOT_FOUND, Status.NO_RESPONSE, Status.CANCELLED):
        health.record(status)
    assert health.snapshot() == HealthSnapshot(Status.SUCCESS, 4, 0)
    health.record(Status.TIMEOUT)
    assert health.status == 500


def test_status_is_recomputed_at_most_every_tick() -> None:
    clock = Clock()
    health = HealthCheck(error_percentage=0.5, min_requests=1, tick=5.0, clock=clock)
    assert health.status == 200
    record(health, failed=3)
    clock.now += 4.9
    assert health.status == 200  # the previous decision stands until the tick
    clock.now += 0.1
    assert health.status == 500
    record(health, ok=10)
    assert health.status == 500
    clock.now += 5.0
    assert health.status == 200


def test_records_from_many_threads_are_all_counted() -> None:
    health = HealthCheck(last_requests=1_000_000, min_requests=1, tick=0)
    windowed = HealthCheck(window=3600.0, min_requests=1, tick=0)
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        for i in range(5_000):
            status = Status.INTERNAL_ERROR if i % 5 == 0 else Status.SUCCESS
            health.record(status)
            windowed.record(status)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert health.snapshot().requests == 40_000
    assert health.snapshot().errors == 8_000
    assert windowed.snapshot().requests == 40_000
    assert windowed.snapshot().errors == 8_000


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"error_percentage": 70}, ValueError),
        ({"error_percentage": -0.1}, ValueError),
        ({"error_percentage": "0.5"}, TypeError),
        ({"window": 0}, ValueError),
        ({"window": "5m"}, TypeError),
        ({"last_requests": 0}, ValueError),
        ({"last_requests": 2.5}, TypeError),
        ({"min_requests": -1}, ValueError),
        ({"min_requests": True}, TypeError),
        ({"tick": -1}, ValueError),
        ({"clock": 5}, TypeError),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        HealthCheck(**kwargs)  # type: ignore[arg-type]


def test_durations_accept_timedelta() -> None:
    health = HealthCheck(window=timedelta(minutes=1), tick=timedelta(seconds=2))
    assert health.window == 60.0
    assert health.tick == 2.0


def test_with_health_check_needs_a_health_check() -> None:
    with pytest.raises(TypeError, match="HealthCheck"):
        with_health_check(object())  # type: ignore[arg-type]


async def test_adapter_records_final_statuses_of_a_worker() -> None:
    # Given a worker whose handler fails on demand, behind a strict health check
    health = HealthCheck(error_percentage=0.5, last_requests=4, min_requests=4, tick=0)
    worker = Worker(middleware=[with_health_check(health)])

    @worker.handler("work")
    async def work(job: Job) -> None:
        outcome = job.args["outcome"]
        if outcome == "raise":
            raise RuntimeError("boom")
        if outcome == "timeout":
            await asyncio.sleep(10)
        if outcome == "unavailable":
            raise JobError(Status.UNAVAILABLE)

    async with worker:
        # When three of four runs fail (exception, timeout, 503)
        for outcome in ("ok", "raise", "timeout", "unavailable"):
            await worker.perform(Job("work", {"outcome": outcome}, timeout=0.05), wait=True)
        # Then the check is down
        assert health.snapshot() == HealthSnapshot(Status.INTERNAL_ERROR, 4, 3)
        # And it recovers once successes push the failures out
        for _ in range(4):
            await worker.perform(Job("work", {"outcome": "ok"}), wait=True)
        assert health.snapshot() == HealthSnapshot(Status.SUCCESS, 4, 0)


async def test_adapter_records_cancelled_runs() -> None:
    health = HealthCheck(last_requests=10, min_requests=1, tick=0)
    worker = Worker(middleware=[with_health_check(health)])
    started = asyncio.Event()

    @worker.handler("slow")
    async def slow(job: Job) -> None:
        started.set()
        await asyncio.sleep(10)

    async with worker:
        execution = await worker.perform(Job("slow"))
        await asyncio.wait_for(started.wait(), 5)
        execution.cancel()
        assert await execution.wait(5) is Status.CANCELLED
    assert health.snapshot() == HealthSnapshot(Status.SUCCESS, 1, 0)


async def test_adapter_records_the_status_of_an_inner_adapter_that_raised() -> None:
    health = HealthCheck(last_requests=10, min_requests=1, error_percentage=0.0, tick=0)

    def broken(inner):  # type: ignore[no-untyped-def]
        async def run(job: Job) -> None:
            raise RuntimeError("adapter bug")

        return run

    worker = Worker(middleware=[broken, with_health_check(health)])
    worker.register("noop", lambda job: None)
    async with worker:
        execution = await worker.perform(Job("noop"), wait=True)
    assert execution.status is Status.INTERNAL_ERROR
    assert health.snapshot() == HealthSnapshot(Status.INTERNAL_ERROR, 1, 1)


def test_set_status_overrides_and_none_returns_to_computed_health() -> None:
    # Given a healthy check (go-work's SetStatus: maintenance mode)
    health = HealthCheck(error_percentage=0.5, min_requests=2, tick=60.0)
    record(health, ok=4)
    assert health.healthy

    # When it is forced down, it stays down whatever is recorded, tick or not
    health.set_status(Status.UNAVAILABLE)
    record(health, ok=10)
    assert health.status is Status.UNAVAILABLE
    assert not health.healthy
    assert health.snapshot().status is Status.UNAVAILABLE

    # And None returns to the computed verdict at once (not after the next tick)
    record(health, failed=20)
    health.set_status(None)
    assert health.status is Status.INTERNAL_ERROR
    health.set_status(200)
    assert health.healthy and health.status is Status.SUCCESS


@pytest.mark.parametrize(
    ("value", "error"), [("down", TypeError), (True, TypeError), (999, ValueError)]
)
def test_set_status_rejects_what_is_not_a_status(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        HealthCheck().set_status(value)  # type: ignore[arg-type]
