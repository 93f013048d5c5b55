"""with_aggregate_logger: one complete JSON record per execution, silent flags, stdlib logging."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from pywork import (
    AGGREGATE_LOGGER,
    BadRequest,
    Context,
    Job,
    NoResponse,
    Status,
    Worker,
    adapt,
)
from pywork.middleware import with_aggregate_logger
from pywork.middleware.logging import AggregateLogger


class Records(logging.Handler):
    """Collects the records a logger hands to it (a real handler, behind real levels)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[tuple[logging.Logger, Records]]:
    logger = logging.getLogger("tests.aggregate")
    handler = Records()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def run(handler: Any, job: Job, *adapters: Any, worker_number: int | None = None) -> Job:
    """Run `job` through `handler` wrapped in `adapters`, outside a worker."""
    job.ctx = Context(job, worker_number=worker_number)
    if job.timeout is not None:  # as the worker does
        job.ctx.deadline = time.monotonic() + job.timeout
    await adapt(handler, *adapters)(job)
    return job


async def test_one_complete_json_record_per_execution() -> None:
    # Given a handler that logs three lines, one with a traceback, and leaves a comment
    out = io.StringIO()

    async def handler(job: Job) -> None:
        log = job.ctx.logger  # type: ignore[union-attr]
        log.info("sending to %s", job.args["to"])
        log.debug("details %(n)d", {"n": 7})
        try:
            raise KeyError("smtp")
        except KeyError:
            log.exception("retrying")
        job.ctx["comment"] = "sent"  # type: ignore[index]

    job = Job("email.send", {"to": "a@b.c"})
    # When it runs with the aggregate logger
    await run(handler, job, with_aggregate_logger(output=out), worker_number=3)
    # Then exactly one JSON line is written, with every field of the contract
    [record] = lines(out)
    assert list(record) == [
        "handler",
        "job_id",
        "status",
        "latency_ms",
        "time",
        "worker_number",
        "comment",
        "entries",
    ]
    assert record["handler"] == "email.send"
    assert record["job_id"] == job.id
    assert record["status"] == 200
    assert isinstance(record["latency_ms"], float) and record["latency_ms"] >= 0
    started = datetime.fromisoformat(record["time"])
    assert started.utcoffset() == timedelta(0)
    assert record["worker_number"] == 3
    assert record["comment"] == "sent"
    entries = record["entries"]
    assert [(e["level"], e["message"].splitlines()[0]) for e in entries] == [
        ("INFO", "sending to a@b.c"),
        ("DEBUG", "details 7"),
        ("ERROR", "retrying"),
    ]
    assert "KeyError: 'smtp'" in entries[2]["message"]
    assert all(datetime.fromisoformat(e["time"]) >= started for e in entries)


async def test_status_is_the_final_integer_code_and_errors_are_named() -> None:
    out = io.StringIO()
    adapter = with_aggregate_logger(output=out)

    async def bad(job: Job) -> None:
        raise BadRequest("no address")

    async def crash(job: Job) -> None:
        raise ZeroDivisionError("oops")

    async def slow(job: Job) -> None:
        await asyncio.sleep(10)

    await run(bad, Job("bad"), adapter)
    await run(crash, Job("crash"), adapter)
    await run(slow, Job("slow", timeout=0.02), adapter)
    bad_line, crash_line, slow_line = lines(out)
    assert (bad_line["status"], bad_line["error"]) == (400, "BadRequest: no address")
    assert (crash_line["status"], crash_line["error"]) == (500, "ZeroDivisionError: oops")
    assert slow_line["status"] == 408
    assert "worker_number" not in slow_line


async def test_a_cancelled_run_is_written_and_cancellation_propagates() -> None:
    out = io.StringIO()
    worker = Worker(middleware=[with_aggregate_logger(output=out)])
    started = asyncio.Event()

    @worker.handler("slow")
    async def slow(job: Job) -> None:
        job.ctx.logger.info("begin")  # type: ignore[union-attr]
        started.set()
        await asyncio.sleep(10)

    async with worker:
        execution = await worker.perform(Job("slow"))
        await asyncio.wait_for(started.wait(), 5)
        execution.cancel()
        assert await execution.wait(5) is Status.CANCELLED
    [record] = lines(out)
    assert record["status"] == 499
    assert [e["message"] for e in record["entries"]] == ["begin"]


async def test_silent_flags_and_reduced_logging() -> None:
    out = io.StringIO()
    seen: list[tuple[Status, int]] = []

    def reduce(status: Status, count: int) -> bool:
        seen.append((status, count))
        return status is Status.BAD_REQUEST and count == 0

    adapter = with_aggregate_logger(
        output=out, silent_success=True, silent_no_response=True, reduced_logging=reduce
    )

    async def handler(job: Job) -> None:
        for _ in range(job.args["lines"]):
            job.ctx.logger.info("line")  # type: ignore[union-attr]
        if job.args["outcome"] == "none":
            raise NoResponse()
        if job.args["outcome"] == "bad":
            raise BadRequest()

    await run(handler, Job("h", {"outcome": "ok", "lines": 1}), adapter)  # silent success
    await run(handler, Job("h", {"outcome": "none", "lines": 1}), adapter)  # silent 444
    await run(handler, Job("h", {"outcome": "bad", "lines": 0}), adapter)  # reduced
    await run(handler, Job("h", {"outcome": "bad", "lines": 2}), adapter)  # written
    [record] = lines(out)
    assert record["status"] == 400
    assert len(record["entries"]) == 2
    assert seen == [(Status.BAD_REQUEST, 0), (Status.BAD_REQUEST, 2)]


async def test_level_drops_lower_entries() -> None:
    out = io.StringIO()

    async def handler(job: Job) -> None:
        log = job.ctx.logger  # type: ignore[union-attr]
        assert not log.isEnabledFor(logging.DEBUG)
        log.debug("hidden")
        log.info("shown")

    await run(handler, Job("h"), with_aggregate_logger(output=out, level=logging.INFO))
    assert [e["message"] for e in lines(out)[0]["entries"]] == ["shown"]


async def test_banner_local_time_and_time_format() -> None:
    out = io.StringIO()

    async def handler(job: Job) -> None:
        job.ctx.logger.warning("w")  # type: ignore[union-attr]

    await run(handler, Job("h"), with_aggregate_logger(output=out, banner=True, utc=False))
    await run(handler, Job("h"), with_aggregate_logger(output=out, time_format="%Y/%m/%d %H:%M"))
    local, formatted = lines(out)
    assert next(iter(local)) == "banner" and "h" in local["banner"]
    local_time = datetime.fromisoformat(local["time"])
    assert local_time.utcoffset() == datetime.now().astimezone().utcoffset()
    assert re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d", formatted["time"])
    assert re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d", formatted["entries"][0]["time"])


async def test_trace_id_from_the_traceparent_header() -> None:
    out = io.StringIO()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    job = Job("h", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    await run(lambda job: None, job, with_aggregate_logger(output=out, trace_id_field="trace"))
    assert lines(out)[0]["trace"] == trace_id


async def test_the_context_logger_is_the_aggregate_logger_during_the_run_only() -> None:
    out = io.StringIO()
    seen: list[Any] = []

    async def handler(job: Job) -> None:
        ctx = job.ctx
        assert ctx is not None
        seen.append(ctx.logger)
        assert ctx.get(AGGREGATE_LOGGER) is ctx.logger

    job = await run(handler, Job("h"), with_aggregate_logger(output=out))
    [logger] = seen
    assert isinstance(logger, AggregateLogger)
    assert isinstance(logger, logging.Logger)
    assert job.ctx is not None and job.ctx.logger is not logger
    logger.info("after the end")  # e.g. a plain handler past its timeout: discarded
    assert logger.entry_count == 0
    assert len(lines(out)) == 1


async def test_output_logger_goes_through_levels_filters_and_handlers(
    collected: tuple[logging.Logger, Records],
) -> None:
    # Given a logger configured the usual way, at WARNING
    logger, handler = collected
    logger.setLevel(logging.WARNING)
    adapter = with_aggregate_logger(output=logger)

    async def handler_fn(job: Job) -> None:
        job.ctx.logger.info("info line")  # type: ignore[union-attr]
        if job.args.get("fail"):
            raise RuntimeError("down")

    # When one run succeeds and one fails
    await run(handler_fn, Job("h"), adapter)
    failing = await run(handler_fn, Job("h", {"fail": True}), adapter)
    # Then only the failure passes the WARNING level, as an ERROR record
    [record] = handler.records
    assert record.levelno == logging.ERROR
    assert record.name == "tests.aggregate"
    body = json.loads(record.getMessage())
    assert body["status"] == 500
    assert body["job_id"] == failing.id
    assert record.aggregate == body  # type: ignore[attr-defined]
    assert record.job_id == failing.id  # type: ignore[attr-defined]
    assert record.handler == "h"  # type: ignore[attr-defined]


async def test_summary_level_is_the_highest_entry_level(
    collected: tuple[logging.Logger, Records],
) -> None:
    logger, handler = collected

    async def warns(job: Job) -> None:
        job.ctx.logger.warning("careful")  # type: ignore[union-attr]

    await run(lambda job: None, Job("quiet"), with_aggregate_logger(output=logger))
    await run(warns, Job("warns"), with_aggregate_logger(output=logger))
    assert [r.levelno for r in handler.records] == [logging.INFO, logging.WARNING]


async def test_a_failing_reduced_logging_never_masks_the_outcome() -> None:
    def broken(status: Status, count: int) -> bool:
        raise ValueError("bug in reduced_logging")

    job = await run(lambda job: None, Job("h"), with_aggregate_logger(reduced_logging=broken))
    assert job.ctx is not None and job.ctx.status is Status.SUCCESS


async def test_default_output_is_the_pywork_aggregate_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pywork.aggregate")
    job = await run(lambda job: None, Job("h"), with_aggregate_logger())
    [record] = [r for r in caplog.records if r.name == "pywork.aggregate"]
    assert json.loads(record.getMessage())["job_id"] == job.id


@pytest.mark.parametrize("sync", [False, True], ids=["async", "plain"])
async def test_1000_concurrent_executions_never_lose_duplicate_or_mix_records(sync: bool) -> None:
    # Given a stream, a stdlib logger writing to another stream, and handlers that
    # interleave their three log lines with other executions
    out = io.StringIO()
    logged = io.StringIO()
    logger = logging.getLogger(f"tests.aggregate.concurrent.{sync}")
    stream_handler = logging.StreamHandler(logged)
    stream_handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(stream_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    worker = Worker(
        middleware=[with_aggregate_logger(output=out), with_aggregate_logger(output=logger)],
        max_concurrency=1000,
    )

    if sync:

        @worker.handler("work")
        def work_sync(job: Job) -> None:
            for step in range(3):
                job.ctx.logger.info("%s step %d", job.id, step)  # type: ignore[union-attr]

    else:

        @worker.handler("work")
        async def work(job: Job) -> None:
            for step in range(3):
                job.ctx.logger.info("%s step %d", job.id, step)  # type: ignore[union-attr]
                await asyncio.sleep(0)

    try:
        async with worker:
            # When 1,000 executions run at once
            executions = [await worker.perform(Job("work")) for _ in range(1000)]
            await asyncio.gather(*(e.wait(30) for e in executions))
    finally:
        logger.removeHandler(stream_handler)
    ids = {e.job.id for e in executions}
    # Then each output has exactly one record per execution, holding only its own lines
    # (the outer logger sees nothing: the inner one replaced ctx.logger during the run)
    for text in (out.getvalue(), logged.getvalue()):
        records = [json.loads(line) for line in text.splitlines()]
        assert len(records) == 1000
        assert {r["job_id"] for r in records} == ids
        for record in records:
            if text is out.getvalue():
                expected = [f"{record['job_id']} step {step}" for step in range(3)]
            else:
                expected = []
            assert [e["message"] for e in record["entries"]] == expected


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"output": 42}, TypeError),
        ({"banner": "yes"}, TypeError),
        ({"silent_success": 1}, TypeError),
        ({"reduced_logging": True}, TypeError),
        ({"level": "INFO"}, TypeError),
        ({"trace_id_field": ""}, TypeError),
        ({"time_format": ""}, TypeError),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        with_aggregate_logger(**kwargs)


def test_the_aggregate_logger_has_every_attribute_of_a_logger() -> None:
    # it sets Logger's attributes itself (hot path): a new Python must not add one unseen
    fresh = AggregateLogger("x", logging.INFO, "id", "h")
    assert set(vars(logging.Logger("x"))) <= set(vars(fresh))
    assert fresh.getEffectiveLevel() == logging.INFO
    assert fresh.isEnabledFor(logging.INFO) and not fresh.isEnabledFor(logging.DEBUG)


def test_every_logging_method_is_buffered() -> None:
    logger = AggregateLogger("x", logging.DEBUG, "id", "h")
    logger.debug("d")
    logger.info("i %s", "x")
    logger.warning("w")
    logger.error("e")
    logger.critical("c")
    logger.log(15, "custom %d", 15)
    try:
        raise ValueError("v")
    except ValueError:
        logger.exception("x")
    logger.handle(logging.LogRecord("other", logging.INFO, __file__, 1, "r %s", ("y",), None))
    logging.LoggerAdapter(logger, {"k": 1}).info("through an adapter")
    entries = logger._close()
    assert [(level, message) for level, message, _, _ in entries] == [
        (logging.DEBUG, "d"),
        (logging.INFO, "i x"),
        (logging.WARNING, "w"),
        (logging.ERROR, "e"),
        (logging.CRITICAL, "c"),
        (15, "custom 15"),
        (logging.ERROR, "x"),
        (logging.INFO, "r y"),
        (logging.INFO, "through an adapter"),
    ]
    assert entries[6][3] is not None and entries[6][3][0] is ValueError
    with pytest.raises(TypeError, match="level"):
        logger.log("INFO", "not a level")  # type: ignore[arg-type]
