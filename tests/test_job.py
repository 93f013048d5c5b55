"""Job and Context (contract §2)."""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta
from typing import Any

import pytest

import pywork
from pywork import (
    AGGREGATE_LOGGER,
    REQUEST_SIZE,
    RESPONSE_SIZE,
    TRACING_CONTEXT,
    Context,
    Job,
    Status,
    Worker,
)

# Job ----------------------------------------------------------------------------


def test_positional_construction_and_defaults() -> None:
    job = Job("email.send", {"to": "a@b.c"})
    assert job.handler == "email.send"
    assert job.args == {"to": "a@b.c"}
    assert job.queue == "default"
    assert job.timeout is None
    assert job.key is None
    assert job.max_retries is None
    assert job.headers == {}
    assert job.ctx is None


def test_all_fields_by_keyword() -> None:
    job = Job(
        handler="h",
        args={"a": 1},
        queue="mail",
        timeout=2,
        id="f" * 32,
        key="k1",
        max_retries=0,
        headers={"traceparent": "00-abc"},
    )
    assert (job.queue, job.timeout, job.id, job.key, job.max_retries) == (
        "mail",
        2.0,
        "f" * 32,
        "k1",
        0,
    )
    assert isinstance(job.timeout, float)
    assert job.headers == {"traceparent": "00-abc"}


def test_args_and_headers_are_fresh_per_instance() -> None:
    a, b = Job("h"), Job("h")
    a.args["x"] = 1
    a.headers["h"] = "v"
    assert b.args == {}
    assert b.headers == {}
    assert a.args is not b.args


def test_id_is_32_hex_chars_and_new_for_each_job() -> None:
    ids = {Job("h").id for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_timedelta_timeout_is_converted_to_seconds() -> None:
    job = Job("h", timeout=timedelta(milliseconds=1500))  # type: ignore[arg-type]
    assert job.timeout == 1.5
    assert isinstance(job.timeout, float)


@pytest.mark.parametrize("handler", [42, None, b"h", ["h"]])
def test_non_str_handler_is_a_type_error(handler: Any) -> None:
    with pytest.raises(TypeError, match="handler must be a str"):
        Job(handler)


def test_empty_handler_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        Job("")


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"timeout": timedelta(0)}, ValueError, "timeout"),
        ({"timeout": "5"}, TypeError, "timeout"),
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"max_retries": 1.5}, ValueError, "max_retries"),
        ({"max_retries": True}, ValueError, "max_retries"),
        ({"headers": {"a": 1}}, TypeError, "headers"),
        ({"headers": {1: "a"}}, TypeError, "headers"),
        ({"headers": [("a", "b")]}, TypeError, "headers"),
        ({"args": [1, 2]}, TypeError, "args"),
        ({"queue": ""}, ValueError, "queue"),
        ({"key": ""}, ValueError, "key"),
        ({"id": ""}, ValueError, "id"),
    ],
)
def test_invalid_fields_are_rejected_with_a_message(
    kwargs: dict[str, Any], exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        Job("h", **kwargs)


def test_copy_has_a_new_id_and_shallow_copies() -> None:
    nested = {"deep": 1}
    job = Job(
        "h",
        {"n": nested, "x": 1},
        queue="q",
        timeout=3,
        key="k",
        max_retries=2,
        headers={"a": "b"},
    )
    job.ctx = Context(job)
    clone = job.copy()
    assert clone is not job
    assert clone.id != job.id
    assert re.fullmatch(r"[0-9a-f]{32}", clone.id)
    assert (clone.handler, clone.queue, clone.timeout, clone.key, clone.max_retries) == (
        "h",
        "q",
        3.0,
        "k",
        2,
    )
    assert clone.args == job.args
    assert clone.headers == job.headers
    assert clone.ctx is None
    # shallow: the dicts are new, their values shared
    clone.args["x"] = 2
    clone.headers["a"] = "c"
    assert job.args["x"] == 1
    assert job.headers["a"] == "b"
    assert clone.args["n"] is nested


# Context ------------------------------------------------------------------------


def test_context_defaults() -> None:
    job = Job("h")
    ctx = Context(job)
    assert ctx.job is job
    assert ctx.worker is None
    assert ctx.status is Status.UNKNOWN
    assert ctx.attempt == 1
    assert ctx.worker_number is None
    assert ctx.deadline is None
    assert ctx.time_left() is None
    assert ctx.cancelled is False
    assert ctx.error is None


def test_context_key_values() -> None:
    ctx = Context(Job("h"))
    assert ctx.get("missing") is None
    assert ctx.get("missing", 7) == 7
    assert "k" not in ctx
    with pytest.raises(KeyError):
        ctx["k"]
    ctx.set("k", 1)
    assert ctx.get("k") == 1
    assert ctx["k"] == 1
    assert "k" in ctx
    ctx["k"] = None
    assert "k" in ctx
    assert ctx["k"] is None
    assert ctx.get("k", 5) is None


def test_status_setter_accepts_members_and_int_codes() -> None:
    ctx = Context(Job("h"))
    ctx.status = Status.NO_RESPONSE
    assert ctx.status is Status.NO_RESPONSE
    ctx.status = 404
    assert ctx.status is Status.NOT_FOUND
    assert isinstance(ctx.status, Status)
    ctx.set_status(503)
    assert ctx.status is Status.UNAVAILABLE  # type: ignore[comparison-overlap]
    ctx.set_status(Status.SUCCESS)
    assert ctx.status is Status.SUCCESS


@pytest.mark.parametrize("junk", ["200", 999, None, 200.0, True, object()])
def test_status_setter_rejects_junk(junk: Any) -> None:
    ctx = Context(Job("h"))
    with pytest.raises(ValueError, match="status"):
        ctx.status = junk
    with pytest.raises(ValueError, match="status"):
        ctx.set_status(junk)
    assert ctx.status is Status.UNKNOWN


def test_time_left_counts_down_to_zero() -> None:
    ctx = Context(Job("h"))
    ctx.deadline = time.monotonic() + 10
    left = ctx.time_left()
    assert left is not None
    assert 9.0 < left <= 10.0
    ctx.deadline = time.monotonic() - 1
    assert ctx.time_left() == 0.0


def test_context_constants() -> None:
    assert AGGREGATE_LOGGER == "aggregateLogger"
    assert TRACING_CONTEXT == "tracing-context"
    assert REQUEST_SIZE == "keyRequestSize"
    assert RESPONSE_SIZE == "keyResponseSize"


def test_logger_records_carry_job_id_and_handler(caplog: pytest.LogCaptureFixture) -> None:
    job = Job("report.build")
    ctx = Context(job)
    with caplog.at_level(logging.INFO, logger="pywork"):
        ctx.logger.info("hello %s", "there", extra={"extra_key": 3})
    [record] = [r for r in caplog.records if r.getMessage() == "hello there"]
    assert record.job_id == job.id  # type: ignore[attr-defined]
    assert record.handler == "report.build"  # type: ignore[attr-defined]
    assert record.extra_key == 3  # type: ignore[attr-defined]
    assert record.name == "pywork"


async def test_context_made_by_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    seen: dict[str, Any] = {}
    custom = logging.getLogger("pywork.tests.custom")

    async def handler(job: Job) -> None:
        assert job.ctx is not None
        seen["ctx"] = job.ctx
        seen["deadline"] = job.ctx.deadline
        seen["left"] = job.ctx.time_left()
        job.ctx.logger.warning("inside")

    async with Worker(logger=custom) as worker:
        worker.register("h", handler)
        job = Job("h", timeout=5)
        with caplog.at_level(logging.INFO, logger="pywork.tests.custom"):
            execution = await worker.perform(job, wait=True)
    ctx = seen["ctx"]
    assert ctx is job.ctx is execution.ctx
    assert ctx.worker is worker
    assert ctx.attempt == 1
    assert ctx.worker_number is None
    assert ctx.status is Status.SUCCESS
    assert seen["deadline"] is not None
    assert 4.0 < seen["left"] <= 5.0
    [record] = [r for r in caplog.records if r.getMessage() == "inside"]
    assert record.name == "pywork.tests.custom"
    assert record.job_id == job.id  # type: ignore[attr-defined]
    assert record.handler == "h"  # type: ignore[attr-defined]


def test_logger_is_replaceable_by_an_adapter() -> None:
    replacement = logging.getLogger("pywork.tests.replacement")
    ctx = Context(Job("h"))
    ctx.logger = replacement
    assert ctx.logger is replacement


def test_job_and_context_are_exported() -> None:
    assert pywork.Job is Job
    assert pywork.Context is Context
