"""Aggregate logging: everything one execution logs, written as ONE JSON record at its end.

During a run ``job.ctx.logger`` (also ``job.ctx[AGGREGATE_LOGGER]``) is an
:class:`AggregateLogger` that buffers records instead of writing them. When the run
ends, one record is written with the execution's handler, job id, status, latency,
start time, worker number, trace id, comment and the buffered ``entries``::

    {"handler": "email.send", "job_id": "9f0c…", "status": 200, "latency_ms": 12.408,
     "time": "2024-05-01T12:00:00.123456+00:00", "worker_number": 3,
     "requestID": "4bf92f3577b34da6a3ce929d0e0e4736", "comment": "sent",
     "entries": [{"level": "INFO", "message": "sending", "time": "2024-05-01T12:00:00.124+00:00"}]}

so that concurrent executions never interleave their lines in the log.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any, TypeAlias

import msgspec

from pywork.handler import log_failure
from pywork.job import AGGREGATE_LOGGER, TRACING_CONTEXT, Context, Job
from pywork.middleware._common import final_status
from pywork.status import Status
from pywork.types import Adapter, Handler

__all__ = ["DEFAULT_LOGGER_NAME", "AggregateLogger", "ReducedLogging", "with_aggregate_logger"]

#: The logger the records go to when ``output`` is None.
DEFAULT_LOGGER_NAME = "pywork.aggregate"
#: ``reduced_logging(status, entry_count)``: True means write nothing for this run.
ReducedLogging: TypeAlias = Callable[[Status, int], bool]

_ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
# level, message, unix time, exception info
_Entry: TypeAlias = tuple[int, str, float, _ExcInfo | None]

_now = time.time
_SUCCESS = Status.SUCCESS
_NO_RESPONSE = Status.NO_RESPONSE
_stream_lock = threading.Lock()  # one line per write, whichever adapter or thread writes
_encoder = msgspec.json.Encoder(enc_hook=str)  # comment values it cannot encode become str


class AggregateLogger(logging.Logger):
    """A ``logging.Logger`` that buffers one execution's records instead of writing them.

    Handlers use it through ``job.ctx.logger`` like any logger (``info``, ``warning``,
    ``exception``, ``log`` …). Records below the adapter's `level` are dropped; records
    logged after the execution ended (e.g. by a plain handler still running past its
    timeout) are discarded. It is safe to use from the thread of a plain handler.
    """

    def __init__(self, name: str, level: int, job_id: str, handler: str) -> None:
        # The attributes logging.Logger.__init__ sets, without its level check (done once
        # by the factory) and Filterer call: it runs once per execution, on the hot path.
        # A test compares them with a real Logger's so that a new Python cannot drift.
        self.name = name
        self.level = level
        self.parent = None
        self.propagate = True
        self.handlers = []
        self.disabled = False
        self.filters = []
        self._cache: dict[int, bool] = {}
        self.job_id = job_id
        self.handler = handler
        self._entries: list[_Entry] | None = []

    def isEnabledFor(self, level: int) -> bool:
        """True when a record at `level` would be buffered."""
        return level >= self.level and self._entries is not None

    # The level methods buffer directly: the Logger's path (isEnabledFor, _log,
    # findCaller, LogRecord) would cost several µs per line for nothing kept here.
    def _add(self, level: int, msg: object, args: tuple[Any, ...], exc_info: Any) -> None:
        entries = self._entries
        if entries is None or level < self.level:
            return
        message = _format(msg, args) if args else msg if type(msg) is str else str(msg)
        entries.append((level, message, _now(), _exc_info(exc_info) if exc_info else None))

    def debug(
        self,
        msg: object,
        *args: object,
        exc_info: Any = None,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Buffer a DEBUG entry."""
        self._add(logging.DEBUG, msg, args, exc_info)

    def info(
        self,
        msg: object,
        *args: object,
        exc_info: Any = None,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Buffer an INFO entry."""
        self._add(logging.INFO, msg, args, exc_info)

    def warning(
        self,
        msg: object,
        *args: object,
        exc_info: Any = None,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Buffer a WARNING entry."""
        self._add(logging.WARNING, msg, args, exc_info)

    def error(
        self,
        msg: object,
        *args: object,
        exc_info: Any = None,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Buffer an ERROR entry."""
        self._add(logging.ERROR, msg, args, exc_info)

    def exception(
        self,
        msg: object,
        *args: object,
        exc_info: Any = True,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Buffer an ERROR entry with the exception being handled."""
        self._add(logging.ERROR, msg, args, exc_info)

    def critical(
        self,
        msg: object,
        *args: object,
        exc_info: Any = None,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Buffer a CRITICAL entry."""
        self._add(logging.CRITICAL, msg, args, exc_info)

    def log(
        self,
        level: int,
        msg: object,
        *args: object,
        exc_info: Any = None,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Buffer an entry at `level`."""
        if not isinstance(level, int):
            raise TypeError(f"level must be an integer, got {level!r}")
        self._add(level, msg, args, exc_info)

    def _log(
        self,
        level: int,
        msg: object,
        args: Any,
        exc_info: Any = None,
        extra: Mapping[str, object] | None = None,
        stack_info: bool = False,
        stacklevel: int = 1,
    ) -> None:
        self._add(level, msg, args if isinstance(args, tuple) else (args,), exc_info)

    def handle(self, record: logging.LogRecord) -> None:
        """Buffer an already-made record (``logger.handle(record)``)."""
        entries = self._entries
        if entries is None or record.levelno < self.level:
            return
        exc = record.exc_info if record.exc_info and record.exc_info[0] is not None else None
        entries.append((record.levelno, record.getMessage(), record.created, exc))

    @property
    def entry_count(self) -> int:
        """Records buffered so far."""
        entries = self._entries
        return 0 if entries is None else len(entries)

    def _close(self) -> list[_Entry]:
        entries = self._entries or []
        self._entries = None
        return entries

    def __repr__(self) -> str:
        return f"<AggregateLogger job={self.job_id} entries={self.entry_count}>"


def _format(msg: object, args: tuple[Any, ...]) -> str:
    values: Any = args
    if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
        values = args[0]  # logging's own rule: log("%(a)s", {"a": 1})
    try:
        text: str = str(msg) % values
        return text
    except (TypeError, ValueError, KeyError):
        return f"{msg} {args!r}"


def _exc_info(exc_info: Any) -> _ExcInfo | None:
    if not exc_info:
        return None
    if isinstance(exc_info, BaseException):
        return (type(exc_info), exc_info, exc_info.__traceback__)
    if not isinstance(exc_info, tuple):
        exc_info = sys.exc_info()
    found: _ExcInfo | None = exc_info if exc_info[0] is not None else None
    return found


def _trace_id(ctx: Context, job: Job) -> str | None:
    span = ctx.get(TRACING_CONTEXT)
    if span is not None:
        try:
            trace_id = span.get_span_context().trace_id
        except AttributeError:
            trace_id = 0
        if trace_id:
            return f"{trace_id:032x}"
    parent = job.headers.get("traceparent")
    if parent is not None:  # version-traceid-spanid-flags (W3C)
        parts = parent.split("-")
        if len(parts) >= 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
            return parts[1]
    return None


def with_aggregate_logger(
    *,
    banner: bool = False,
    utc: bool = True,
    time_format: str | None = None,
    trace_id_field: str = "requestID",
    silent_success: bool = False,
    silent_no_response: bool = False,
    reduced_logging: ReducedLogging | None = None,
    level: int = logging.DEBUG,
    output: logging.Logger | IO[str] | None = None,
) -> Adapter:
    """Adapter buffering an execution's log records and writing ONE JSON record at its end.

    During a run ``job.ctx.logger`` and ``job.ctx.get(AGGREGATE_LOGGER)`` are an
    :class:`AggregateLogger`. At the end one JSON object is written with ``handler``,
    ``job_id``, ``status`` (the integer code), ``latency_ms``, ``time`` (the start),
    ``worker_number`` (when set), the trace id under `trace_id_field` (from the span of
    ``with_tracing``, else from a ``traceparent`` header), ``comment`` (ctx key
    ``"comment"``, when set), ``error`` (``"Type: message"`` when the run raised) and
    ``entries``: the buffered records, each ``{"level", "message", "time"}``.
    Cancelled runs are written too.

    Args:
        banner: add a ``"banner"`` field first, a visual separator in plain-text logs.
        utc: times in UTC (else local time, with its offset).
        time_format: a ``strftime`` format; None for ISO 8601 with microseconds.
        trace_id_field: the key of the trace id.
        silent_success: write nothing for SUCCESS runs.
        silent_no_response: write nothing for NO_RESPONSE runs.
        reduced_logging: ``f(status, entry_count)``; write nothing when it returns True.
        level: the lowest level buffered (lower records are dropped).
        output: a ``logging.Logger`` (the record goes through its level, filters and
            handlers; its message is the JSON text and ``record.aggregate`` the dict)
            or a text stream (one JSON line per run, flushed). None is
            ``logging.getLogger("pywork.aggregate")``.

    The record goes to a logger at ERROR when the status ``is_error``, else at the
    highest level among the entries, INFO at least.

    Raises:
        TypeError, ValueError: an argument has the wrong type or value.
    """
    for name, flag in (
        ("banner", banner),
        ("utc", utc),
        ("silent_success", silent_success),
        ("silent_no_response", silent_no_response),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    if time_format is not None and (not isinstance(time_format, str) or not time_format):
        raise TypeError(
            f"time_format must be None (ISO 8601) or a strftime format str, got {time_format!r}"
        )
    if not isinstance(trace_id_field, str) or not trace_id_field:
        raise TypeError(f"trace_id_field must be a non-empty str, got {trace_id_field!r}")
    if reduced_logging is not None and not callable(reduced_logging):
        raise TypeError(
            "reduced_logging must be None or a callable f(status, entry_count) -> bool, "
            f"got {reduced_logging!r}"
        )
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(f"level must be a logging level int such as logging.INFO, got {level!r}")
    if output is None:
        output = logging.getLogger(DEFAULT_LOGGER_NAME)
    if isinstance(output, logging.LoggerAdapter):
        output = output.logger
    if not isinstance(output, logging.Logger) and not callable(getattr(output, "write", None)):
        raise TypeError(
            f"output must be None, a logging.Logger or a text stream with write(), got {output!r}"
        )

    stamp = _iso_stamper(utc) if time_format is None else _strftime_stamper(utc, time_format)

    write = _to_logger(output) if isinstance(output, logging.Logger) else _to_stream(output)

    def adapter(inner: Handler) -> Handler:
        async def aggregate_logger(job: Job) -> None:
            ctx = job.ctx
            if ctx is None:  # called outside a worker
                ctx = job.ctx = Context(job)
            logger = AggregateLogger(DEFAULT_LOGGER_NAME, level, job.id, job.handler)
            previous = ctx.logger
            ctx.logger = logger
            ctx.set(AGGREGATE_LOGGER, logger)
            started = time.time()
            t0 = time.perf_counter()
            exc: BaseException | None = None
            try:
                await inner(job)
            except BaseException as raised:
                exc = raised
                raise
            finally:
                latency = time.perf_counter() - t0
                ctx.logger = previous
                entries = logger._close()
                status = final_status(ctx, exc)
                try:
                    if not (
                        (silent_success and status is _SUCCESS)
                        or (silent_no_response and status is _NO_RESPONSE)
                        or (reduced_logging is not None and reduced_logging(status, len(entries)))
                    ):
                        _write_summary(ctx, job, status, latency, started, entries, exc)
                except Exception as failure:  # never mask the run's own outcome
                    log_failure(ctx, failure, "with_aggregate_logger around")

        return aggregate_logger

    def _write_summary(
        ctx: Context,
        job: Job,
        status: Status,
        latency: float,
        started: float,
        entries: list[_Entry],
        exc: BaseException | None,
    ) -> None:
        record: dict[str, Any] = {}
        if banner:
            record["banner"] = f"[pywork] {'-' * 24} {job.handler} {'-' * 24}"
        record["handler"] = job.handler
        record["job_id"] = job.id
        record["status"] = int(status)
        record["latency_ms"] = round(latency * 1000.0, 3)
        record["time"] = stamp(started)
        if ctx.worker_number is not None:
            record["worker_number"] = ctx.worker_number
        trace_id = _trace_id(ctx, job)
        if trace_id is not None:
            record[trace_id_field] = trace_id
        comment = ctx.get("comment")
        if comment is not None:
            record["comment"] = comment
        error = ctx.error if exc is None else exc
        if isinstance(error, Exception):
            detail = str(error)
            record["error"] = (
                f"{type(error).__name__}: {detail}" if detail else type(error).__name__
            )
        highest = logging.INFO
        rows = []
        for lvl, message, when, exc_info in entries:
            if exc_info is not None:
                message = message + "\n" + "".join(traceback.format_exception(*exc_info)).rstrip()
            rows.append(
                {"level": logging.getLevelName(lvl), "message": message, "time": stamp(when)}
            )
            if lvl > highest:
                highest = lvl
        record["entries"] = rows
        write(logging.ERROR if status.is_error else highest, record, job)

    return adapter


def _iso_stamper(utc: bool) -> Callable[[float], str]:
    """ISO 8601 with microseconds, the date part formatted once per second.

    ``datetime.fromtimestamp(t).isoformat()`` costs about 1 µs and a run writes one
    time per entry plus its start; the cached second makes it a string format.
    """
    cached: tuple[int, str, str] = (-1, "", "")

    def stamp(when: float) -> str:
        nonlocal cached
        second = int(when)
        found = cached  # one read: another thread may replace it meanwhile
        if found[0] != second:
            moment = (
                datetime.fromtimestamp(second, UTC)
                if utc
                else datetime.fromtimestamp(second).astimezone()
            )
            text = moment.isoformat()  # YYYY-MM-DDTHH:MM:SS+HH:MM
            found = cached = (second, text[:19], text[19:])
        return f"{found[1]}.{int((when - second) * 1e6):06d}{found[2]}"

    return stamp


def _strftime_stamper(utc: bool, fmt: str) -> Callable[[float], str]:
    def stamp(when: float) -> str:
        moment = datetime.fromtimestamp(when, UTC) if utc else datetime.fromtimestamp(when)
        return (moment if utc else moment.astimezone()).strftime(fmt)

    return stamp


def _to_logger(output: logging.Logger) -> Callable[[int, dict[str, Any], Job], None]:
    def write(level: int, record: dict[str, Any], job: Job) -> None:
        if not output.isEnabledFor(level):
            return
        line = _encoder.encode(record).decode()
        log_record = output.makeRecord(
            output.name,
            level,
            __file__,
            0,
            line,
            (),
            None,
            func="with_aggregate_logger",
            extra={"job_id": job.id, "handler": job.handler, "aggregate": record},
        )
        output.handle(log_record)

    return write


def _to_stream(output: IO[str]) -> Callable[[int, dict[str, Any], Job], None]:
    flush = getattr(output, "flush", None)

    def write(level: int, record: dict[str, Any], job: Job) -> None:
        line = _encoder.encode(record).decode() + "\n"
        with _stream_lock:
            output.write(line)
            if flush is not None:
                flush()

    return write
