"""Job (the request) and Context (the per-execution state passed down the middleware chain)."""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections.abc import MutableMapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pywork._durations import optional_duration
from pywork.status import Status

__all__ = [
    "AGGREGATE_LOGGER",
    "MAX_NAME_LENGTH",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TRACING_CONTEXT",
    "Context",
    "Job",
    "Progress",
    "WorkerLike",
    "new_id",
]

#: The longest handler name, queue name and unique key a Job takes (they are logged with
#: every attempt and indexed by every broker).
MAX_NAME_LENGTH = 255

#: Context key of the aggregate logger set by ``with_aggregate_logger``.
AGGREGATE_LOGGER = "aggregateLogger"
#: Context key of the OpenTelemetry span set by ``with_tracing``.
TRACING_CONTEXT = "tracing-context"
#: Context key a handler sets to the size of its input, observed by ``with_prometheus``.
REQUEST_SIZE = "keyRequestSize"
#: Context key a handler sets to the size of its output, observed by ``with_prometheus``.
RESPONSE_SIZE = "keyResponseSize"

_MISSING: Any = object()
_UNKNOWN = Status.UNKNOWN
_SUCCESS = Status.SUCCESS

# Job ids are cut from 4 KiB of random bytes at a time: one call instead of one per job.
# Mersenne Twister: ids need uniqueness, not secrecy; random reseeds in forked children
# and the pool is emptied there, so no two processes hand out the same ids.
_ids: list[str] = []
_ID_BATCH = 256


def _refill_ids() -> None:
    hexed = random.randbytes(16 * _ID_BATCH).hex()
    _ids.extend([hexed[i : i + 32] for i in range(0, 32 * _ID_BATCH, 32)])


os.register_at_fork(after_in_child=_ids.clear)


def new_id() -> str:
    """Return a new random job id: 32 lowercase hex characters (128 random bits)."""
    try:
        return _ids.pop()
    except IndexError:
        _refill_ids()
        return _ids.pop()


@dataclass(slots=True, eq=False)
class Job:
    """A unit of work, like a request: which handler, with which args, on which queue.

    Args:
        handler: the registered handler name (a non-empty str).
        args: the handler's arguments; JSON-compatible when the job goes through a
            durable queue.
        queue: the durable queue the job goes to.
        timeout: seconds (or a timedelta) one execution may take; None for no limit.
        id: 32 hex characters, new for each Job.
        key: uniqueness key on durable queues.
        max_retries: durable retries; None takes the consumer's default.
        headers: string metadata, such as W3C trace context.
        ctx: the Context of the current execution, set by the worker.

    Raises:
        TypeError, ValueError: a field has the wrong type or value.
    """

    handler: str
    args: dict[str, Any] = field(default_factory=dict)
    queue: str = "default"
    timeout: float | None = None
    id: str = field(default_factory=new_id)
    key: str | None = None
    max_retries: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    ctx: Context | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        handler, queue, headers = self.handler, self.queue, self.headers
        if type(handler) is not str or not handler:
            if not isinstance(handler, str):
                raise TypeError(f"Job handler must be a str naming a handler, got {handler!r}")
            raise ValueError("Job handler must be a non-empty str naming a registered handler")
        if not isinstance(self.args, dict):
            raise TypeError(f"Job args must be a dict, got {type(self.args).__name__}")
        if len(handler) > MAX_NAME_LENGTH:
            raise ValueError(
                f"Job handler names are at most {MAX_NAME_LENGTH} characters, got {len(handler)}"
            )
        if queue != "default" and (
            not isinstance(queue, str) or not queue or len(queue) > MAX_NAME_LENGTH
        ):
            raise ValueError(
                f"Job queue must be a non-empty str of at most {MAX_NAME_LENGTH} characters, "
                f"got {queue!r:.80}"
            )
        if self.timeout is not None:
            timeout: object = self.timeout
            self.timeout = optional_duration(timeout, "Job timeout", allow_zero=False)
        if type(self.id) is not str or not self.id:
            raise ValueError(f"Job id must be a non-empty str, got {self.id!r}")
        if self.key is not None and (
            not isinstance(self.key, str) or not self.key or len(self.key) > MAX_NAME_LENGTH
        ):
            raise ValueError(
                f"Job key must be None or a non-empty str of at most {MAX_NAME_LENGTH} "
                f"characters, got {self.key!r:.80}"
            )
        retries: object = self.max_retries
        if retries is not None and (
            isinstance(retries, bool) or not isinstance(retries, int) or retries < 0
        ):
            raise ValueError(f"Job max_retries must be None or an int >= 0, got {retries!r}")
        if not isinstance(headers, dict) or (
            headers
            and not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise TypeError(f"Job headers must be a dict of str to str, got {headers!r}")

    def copy(self) -> Job:
        """Return a copy with a new id, shallow copies of args and headers, and no ctx."""
        clone = object.__new__(Job)
        clone.handler = self.handler
        clone.args = dict(self.args)
        clone.queue = self.queue
        clone.timeout = self.timeout
        clone.id = new_id()
        clone.key = self.key
        clone.max_retries = self.max_retries
        clone.headers = dict(self.headers)
        clone.ctx = None
        return clone


@dataclass(frozen=True, slots=True)
class Progress:
    """A running job's latest progress report (``ctx.set_progress``).

    Attributes:
        current: how far it got (>= 0).
        total: the end of the scale (> 0, >= current), or None when unknown.
        message: what it is doing, or None.
        updated_at: when it was reported (aware UTC).
    """

    current: float
    total: float | None
    message: str | None
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        """As a JSON object (``updated_at`` in epoch seconds): how brokers store it."""
        return {
            "current": self.current,
            "total": self.total,
            "message": self.message,
            "updated_at": self.updated_at.timestamp(),
        }

    @classmethod
    def from_json(cls, data: object) -> Progress | None:
        """The inverse of :meth:`to_json`; None for anything else (a record still shows)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                data["current"],
                data.get("total"),
                data.get("message"),
                datetime.fromtimestamp(data["updated_at"], UTC),
            )
        except (KeyError, TypeError, ValueError, OverflowError):
            return None


def _check_progress(current: object, total: object, message: object) -> None:
    for name, value in (("current", current), ("total", total)):
        if value is None and name == "total":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"progress {name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"progress {name} must be finite, got {value!r}")
    assert isinstance(current, int | float)
    if current < 0:
        raise ValueError(f"progress current must be >= 0, got {current!r}")
    if total is not None:
        assert isinstance(total, int | float)
        if total <= 0:
            raise ValueError(f"progress total must be > 0 (or None), got {total!r}")
        if current > total:
            raise ValueError(f"progress current ({current!r}) must be <= total ({total!r})")
    if message is not None and not isinstance(message, str):
        raise TypeError(f"progress message must be a str or None, got {message!r}")


class WorkerLike(Protocol):
    """The worker as its contexts see it (``ctx.worker``); a :class:`pywork.Worker` at run time.

    A Protocol rather than the Worker class, so that this module does not import the
    worker module. It names what handlers and middleware read of the worker running
    them; ``isinstance(ctx.worker, pywork.Worker)`` narrows it to the whole class (to
    perform other jobs from a handler, for instance).
    """

    @property
    def name(self) -> str:
        """The worker's name, for logs and the ops app."""
        ...

    @property
    def session(self) -> dict[str, Any]:
        """Shared resources for handlers (pools, clients)."""
        ...

    @property
    def logger(self) -> logging.Logger | logging.LoggerAdapter[Any]:
        """Where tracebacks and worker events go."""
        ...

    @property
    def max_concurrency(self) -> int | None:
        """The most executions running at once, or None for no limit."""
        ...

    @property
    def running(self) -> bool:
        """True between start and the beginning of stop."""
        ...

    @property
    def active(self) -> int:
        """Executions in progress."""
        ...

    @property
    def handlers(self) -> list[str]:
        """The registered handler names."""
        ...

    def thread_pool(self) -> Executor:
        """The pool plain (sync) handlers run in. Internal: used by the outcome rules."""
        ...

    def timeout_for(self, handler: str) -> float | None:
        """The `timeout` option `handler` was registered with (applies when the job has
        none), or None."""
        ...


class _JobLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose records carry `job_id` and `handler`, merged with any caller `extra`."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = kwargs.get("extra")
        kwargs["extra"] = {**(self.extra or {}), **extra} if extra else self.extra
        return msg, kwargs


class Context:
    """The state of one execution, made by the worker and attached as ``job.ctx``.

    It carries key/values down the middleware chain (``ctx["k"] = v``), the status,
    the deadline, the cancellation flag, the attempt number and a logger.
    """

    __slots__ = (
        "_abandoned_by",
        "_logger",
        "_status",
        "_values",
        "attempt",
        "cancelled",
        "deadline",
        "error",
        "job",
        "progress",
        "result",
        "worker",
        "worker_number",
    )

    def __init__(
        self,
        job: Job,
        worker: WorkerLike | None = None,
        attempt: int = 1,
        worker_number: int | None = None,
    ) -> None:
        self.job = job
        self.worker = worker
        self.attempt = attempt
        self.worker_number = worker_number
        self.deadline: float | None = None
        self.cancelled = False
        self.error: BaseException | None = None
        self.result: Any = None
        self.progress: Progress | None = None
        self._status = Status.UNKNOWN
        self._values: dict[str, Any] | None = None
        self._logger: Any = None
        self._abandoned_by: int | None = None

    # key/values -------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        """Return the value stored under `key`, or `default`."""
        values = self._values
        return default if values is None else values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Store `value` under `key` for the rest of this execution."""
        if self._values is None:
            self._values = {}
        self._values[key] = value

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __contains__(self, key: object) -> bool:
        return self._values is not None and key in self._values

    # status -----------------------------------------------------------------
    @property
    def status(self) -> Status:
        """The execution's status; UNKNOWN until the handler or the outcome rules set it."""
        return self._status

    @status.setter
    def status(self, value: Status | int) -> None:
        if self._abandoned_by is not None and threading.get_ident() != self._abandoned_by:
            return  # a sync handler that outlived its deadline: its writes are discarded
        self._status = Status.coerce(value)

    def set_status(self, status: Status | int) -> None:
        """Set the execution's status (a Status or its integer code)."""
        self.status = status

    # progress ---------------------------------------------------------------
    def set_progress(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report how far the run got; :attr:`progress` becomes the new :class:`Progress`.

        Callable from async and plain handlers (any thread). On a durable queue the
        consumer writes the latest report to the job's record with its lease renewals
        (a few writes a second however often this is called) and once more at the end.

        Raises:
            TypeError: a value of the wrong type.
            ValueError: ``current < 0``, ``total <= 0`` or ``current > total``
                (:attr:`progress` is left unchanged).
        """
        _check_progress(current, total, message)
        self.progress = Progress(current, total, message, datetime.now(UTC))

    # time -------------------------------------------------------------------
    def time_left(self) -> float | None:
        """Seconds until the deadline (never negative), or None without a timeout."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    # logging ----------------------------------------------------------------
    @property
    def logger(self) -> logging.Logger:
        """A logger whose records carry `job_id` and `handler` (replaceable by adapters)."""
        logger = self._logger
        if logger is None:
            base = self.worker.logger if self.worker is not None else logging.getLogger("pywork")
            logger = self._logger = _JobLogger(
                base, {"job_id": self.job.id, "handler": self.job.handler}
            )
        return logger  # type: ignore[no-any-return]

    @logger.setter
    def logger(self, value: Any) -> None:
        self._logger = value

    # the outcome (internal: written by the outcome rules and the worker) ----------
    def set_outcome(
        self, status: Status, error: BaseException | None = None, *, cancelled: bool = False
    ) -> None:
        """Record how the execution ended. Internal: the outcome rules and the worker.

        Unlike the :attr:`status` setter it neither coerces `status` nor ignores the
        write of an abandoned thread: it is called from the event loop with a Status.

        Args:
            status: the final status.
            error: the exception that ended the run, stored in :attr:`error` (when not None).
            cancelled: also set :attr:`cancelled` (a cancellation or a timeout).
        """
        self._status = status
        if error is not None:
            self.error = error
        if cancelled:
            self.cancelled = True

    def returned(self, result: Any = None) -> None:
        """The handler returned `result`: it becomes :attr:`result`; an UNKNOWN status
        becomes SUCCESS, a status it set is kept.

        Internal: the outcome rules call it once per run.
        """
        self.result = result
        if self._status is _UNKNOWN:
            self._status = _SUCCESS

    def abandon(self) -> None:
        """Discard status writes from other threads (a sync handler past its end).

        Internal: the outcome rules call it when a plain handler's run times out or is
        cancelled while its thread goes on.
        """
        self.cancelled = True
        self._abandoned_by = threading.get_ident()

    def __repr__(self) -> str:
        return (
            f"<Context job={self.job.id} handler={self.job.handler!r} "
            f"status={self._status.name} attempt={self.attempt}>"
        )
