"""The JobError family and the framework errors (contract §1)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import pywork
from pywork import (
    BadRequest,
    ChannelClosed,
    ChannelFull,
    Forbidden,
    Handler,
    HandlerAlreadyRegistered,
    HandlerNotFound,
    InternalError,
    Job,
    JobError,
    JobTimeout,
    NoResponse,
    NotFound,
    PyworkError,
    SerializationError,
    Status,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Worker,
    WorkerNotRunning,
    adapt,
    status_for,
)

FIXED = [
    (BadRequest, Status.BAD_REQUEST),
    (Unauthorized, Status.UNAUTHORIZED),
    (Forbidden, Status.FORBIDDEN),
    (NotFound, Status.NOT_FOUND),
    (JobTimeout, Status.TIMEOUT),
    (TooManyRequests, Status.TOO_MANY_REQUESTS),
    (NoResponse, Status.NO_RESPONSE),
    (InternalError, Status.INTERNAL_ERROR),
    (Unavailable, Status.UNAVAILABLE),
]


def test_job_error_carries_status_message_and_retry_after() -> None:
    err = JobError(Status.TOO_MANY_REQUESTS, "slow down", retry_after=2.5)
    assert err.status is Status.TOO_MANY_REQUESTS
    assert str(err) == "slow down"
    assert err.retry_after == 2.5
    assert JobError(Status.UNAVAILABLE).retry_after is None


def test_job_error_accepts_an_integer_code() -> None:
    err = JobError(503)
    assert err.status is Status.UNAVAILABLE
    assert isinstance(err.status, Status)


def test_job_error_rejects_unknown_statuses() -> None:
    with pytest.raises(ValueError, match="status"):
        JobError(299)
    with pytest.raises(ValueError, match="status"):
        JobError("oops")  # type: ignore[arg-type]


def test_retry_after_accepts_a_timedelta_and_converts_it() -> None:
    err = JobError(Status.TOO_MANY_REQUESTS, retry_after=timedelta(minutes=1, seconds=30))
    assert err.retry_after == 90.0
    assert isinstance(err.retry_after, float)
    assert TooManyRequests(retry_after=timedelta(milliseconds=250)).retry_after == 0.25
    assert Unavailable(retry_after=3).retry_after == 3.0


@pytest.mark.parametrize("bad", [-1, -0.5, "1", timedelta(seconds=-1), True])
def test_retry_after_rejects_bad_values(bad: object) -> None:
    with pytest.raises(ValueError, match="retry_after"):
        JobError(Status.UNAVAILABLE, retry_after=bad)  # type: ignore[arg-type]


def test_retry_after_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        JobError(Status.UNAVAILABLE, "msg", 3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Unavailable("msg", 3)  # type: ignore[call-arg]


@pytest.mark.parametrize(("cls", "status"), FIXED, ids=lambda v: getattr(v, "__name__", ""))
def test_fixed_status_subclasses(cls: Any, status: Status) -> None:
    plain = cls()
    assert plain.status is status
    assert str(plain) == ""
    assert plain.retry_after is None
    err = cls("why", retry_after=timedelta(seconds=4))
    assert err.status is status
    assert str(err) == "why"
    assert err.retry_after == 4.0
    assert isinstance(err, JobError)
    assert isinstance(err, PyworkError)
    assert cls.__name__ in repr(err)


def test_error_tree() -> None:
    for cls in (
        JobError,
        HandlerNotFound,
        HandlerAlreadyRegistered,
        SerializationError,
        WorkerNotRunning,
        ChannelClosed,
        ChannelFull,
    ):
        assert issubclass(cls, PyworkError)
        assert issubclass(cls, Exception)
    assert issubclass(HandlerNotFound, LookupError)
    assert issubclass(HandlerAlreadyRegistered, ValueError)
    assert issubclass(SerializationError, TypeError)
    assert issubclass(WorkerNotRunning, RuntimeError)
    assert issubclass(ChannelClosed, RuntimeError)
    assert issubclass(ChannelFull, RuntimeError)
    assert not issubclass(JobError, RuntimeError)


def test_every_exception_pywork_exports_derives_from_the_root() -> None:
    exported = [getattr(pywork, name) for name in pywork.__all__]
    exceptions = [obj for obj in exported if isinstance(obj, type) and issubclass(obj, Exception)]
    assert len(exceptions) >= 17
    assert all(issubclass(exc, PyworkError) for exc in exceptions)


def test_catching_by_builtin_base() -> None:
    with pytest.raises(LookupError):
        raise HandlerNotFound("no handler 'x'")
    with pytest.raises(ValueError):
        raise HandlerAlreadyRegistered("taken")


# status_for: the one exception -> status rule ------------------------------------


@pytest.mark.parametrize(("cls", "status"), FIXED)
def test_status_for_a_fixed_status_error_is_its_status(
    cls: Callable[[str], JobError], status: Status
) -> None:
    assert status_for(cls("x")) is status


@pytest.mark.parametrize("status", [s for s in Status if s is not Status.UNKNOWN])
def test_status_for_a_job_error_is_its_status(status: Status) -> None:
    assert status_for(JobError(status)) is status


def test_status_for_a_cancellation_is_cancelled() -> None:
    assert status_for(asyncio.CancelledError()) is Status.CANCELLED


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("boom"), ValueError(), TimeoutError("the handler's own"), KeyError("k")],
)
def test_status_for_any_other_exception_is_internal_error(exc: BaseException) -> None:
    # a TimeoutError the handler raises itself is not the job's deadline
    assert status_for(exc) is Status.INTERNAL_ERROR


def test_status_for_a_job_timeout_is_timeout() -> None:
    assert status_for(JobTimeout("late")) is Status.TIMEOUT


async def test_the_worker_records_what_status_for_says() -> None:
    errors: list[BaseException] = [JobTimeout(), BadRequest(), TimeoutError(), RuntimeError()]

    async def handler(job: Job) -> None:
        raise errors[job.args["i"]]

    async def raising_adapter_handler(job: Job) -> None:
        pass

    def raising(inner: Handler) -> Handler:
        async def run(job: Job) -> None:
            await inner(job)
            raise errors[job.args["i"]]

        return run

    async with Worker(logger=logging.getLogger("pywork.test.status_for")) as worker:
        worker.register("h", handler)
        worker.register("a", adapt(raising_adapter_handler, raising))
        for i, exc in enumerate(errors):
            for name in ("h", "a"):
                execution = await worker.perform(Job(name, {"i": i}), wait=True)
                assert execution.status is status_for(exc)
                assert execution.error is exc
