"""The exceptions pywork raises, and the ones handlers raise to set a status.

Every exception pywork defines derives from :class:`PyworkError`::

    PyworkError
    ├── JobError                  raised by a handler to end its run with a status
    │   ├── BadRequest            400: the job's input is wrong; never retried
    │   ├── Unauthorized          401
    │   ├── Forbidden             403
    │   ├── NotFound              404: retryable (the thing may appear)
    │   ├── JobTimeout            408: retryable
    │   ├── TooManyRequests       429: retryable, often with retry_after
    │   ├── NoResponse            444: nothing to do (counts as success)
    │   ├── InternalError         500: retryable
    │   └── Unavailable           503: retryable
    ├── HandlerNotFound           (LookupError) performing a job whose handler is not registered
    ├── HandlerAlreadyRegistered  (ValueError) registering a handler name twice
    ├── SerializationError        (TypeError) job args a durable queue cannot encode
    ├── InvalidArgs               (ValueError) job args that do not convert to a handler's model
    ├── WorkerNotRunning          (RuntimeError) performing on a worker not started or stopped
    ├── ChannelClosed             (RuntimeError) sending on a closed Channel
    ├── ChannelFull               (RuntimeError) send_nowait on a full Channel
    └── BrokerError               a broker call failed in its storage
        ├── BrokerUnavailable     (ConnectionError) the broker's server or file cannot be reached
        └── BrokerClosed          a call on a broker after its close()
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pywork.status import Status

__all__ = [
    "BadRequest",
    "BrokerClosed",
    "BrokerError",
    "BrokerUnavailable",
    "ChannelClosed",
    "ChannelFull",
    "Forbidden",
    "HandlerAlreadyRegistered",
    "HandlerNotFound",
    "InternalError",
    "InvalidArgs",
    "JobError",
    "JobTimeout",
    "NoResponse",
    "NotFound",
    "PyworkError",
    "SerializationError",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "WorkerNotRunning",
    "status_for",
]


class PyworkError(Exception):
    """Root of every exception pywork defines."""


class JobError(PyworkError):
    """Raised by a handler to end its run with `status` (and an optional retry delay).

    Args:
        status: the Status (or its integer code) the run ends with.
        message: a human-readable reason, stored in the job's error.
        retry_after: seconds (or a timedelta) to wait before a durable retry.
    """

    status: Status
    retry_after: float | None

    def __init__(
        self,
        status: Status | int,
        message: str = "",
        *,
        retry_after: float | timedelta | None = None,
    ) -> None:
        super().__init__(message)
        self.status = Status.coerce(status)
        self.message = message
        self.retry_after = _retry_after(retry_after)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status.name}, {self.message!r})"


def _retry_after(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(
            f"retry_after must be None or a number of seconds >= 0 (or a timedelta), got {value!r}"
        )
    return float(value)


class _FixedStatusError(JobError):
    _status = Status.UNKNOWN

    def __init__(self, message: str = "", *, retry_after: float | timedelta | None = None) -> None:
        super().__init__(self._status, message, retry_after=retry_after)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class BadRequest(_FixedStatusError):
    """The job's input is wrong (400); durable queues dead-letter it at once."""

    _status = Status.BAD_REQUEST


class Unauthorized(_FixedStatusError):
    """The job lacks credentials (401)."""

    _status = Status.UNAUTHORIZED


class Forbidden(_FixedStatusError):
    """The job may not do what it asks (403)."""

    _status = Status.FORBIDDEN


class NotFound(_FixedStatusError):
    """Something the job needs does not exist (yet) (404, retryable)."""

    _status = Status.NOT_FOUND


class JobTimeout(_FixedStatusError):
    """The job ran out of time (408, retryable)."""

    _status = Status.TIMEOUT


class TooManyRequests(_FixedStatusError):
    """A rate limit was hit (429, retryable; pass `retry_after`)."""

    _status = Status.TOO_MANY_REQUESTS


class NoResponse(_FixedStatusError):
    """There was nothing to do (444); counts as a success for durable queues."""

    _status = Status.NO_RESPONSE


class InternalError(_FixedStatusError):
    """The job failed (500, retryable)."""

    _status = Status.INTERNAL_ERROR


class Unavailable(_FixedStatusError):
    """A dependency is unavailable (503, retryable)."""

    _status = Status.UNAVAILABLE


_CANCELLED = Status.CANCELLED
_INTERNAL_ERROR = Status.INTERNAL_ERROR


def status_for(exc: BaseException) -> Status:
    """The status an execution ends with when `exc` ends it (the rule of contract §3).

    A :class:`JobError` gives its own status (so :class:`JobTimeout` gives TIMEOUT),
    :class:`InvalidArgs` BAD_REQUEST, ``asyncio.CancelledError`` CANCELLED, and anything
    else INTERNAL_ERROR, including a ``TimeoutError`` the handler raised itself: only the
    job's own deadline (``job.timeout``) gives TIMEOUT, and that is not an exception the
    handler raises. The outcome rules, the worker and the built-in middleware all
    use this one function.
    """
    if isinstance(exc, JobError):
        return exc.status
    if isinstance(exc, InvalidArgs):
        return Status.BAD_REQUEST
    if isinstance(exc, asyncio.CancelledError):
        return _CANCELLED
    return _INTERNAL_ERROR


class HandlerNotFound(PyworkError, LookupError):
    """Raised when performing a job whose handler is not registered."""


class HandlerAlreadyRegistered(PyworkError, ValueError):
    """Raised when registering a handler name that is already registered."""


class SerializationError(PyworkError, TypeError):
    """Raised when job args cannot be encoded for a durable queue; names the key path."""


class InvalidArgs(PyworkError, ValueError):
    """Raised when job args do not convert to a handler's args model (the message names
    the field and what was expected); the run ends with BAD_REQUEST."""


class WorkerNotRunning(PyworkError, RuntimeError):
    """Raised when performing on a worker that is not started or is stopped."""


class ChannelClosed(PyworkError, RuntimeError):
    """Raised when sending on a closed Channel."""


class ChannelFull(PyworkError, RuntimeError):
    """Raised by `Channel.send_nowait` when the channel is full."""


class BrokerError(PyworkError):
    """Raised when a broker call fails in its storage (the root of broker failures)."""


class BrokerUnavailable(BrokerError, ConnectionError):
    """Raised when the broker cannot be reached; the message names host and port (or the
    file), never a password."""


class BrokerClosed(BrokerError):
    """Raised by a call on a broker after its ``close()``."""
