"""Job statuses, modelled on HTTP status codes."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Status"]


class Status(IntEnum):
    """The outcome of one execution, as an HTTP-like code.

    A handler sets it (or lets the outcome rules set it); adapters read it when the
    inner call returns, as HTTP middleware reads a response's status.
    """

    UNKNOWN = -1
    SUCCESS = 200
    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    TIMEOUT = 408
    TOO_MANY_REQUESTS = 429
    NO_RESPONSE = 444
    CANCELLED = 499
    INTERNAL_ERROR = 500
    UNAVAILABLE = 503

    @property
    def is_error(self) -> bool:
        """True for TIMEOUT and every 5xx: the failures a health check counts."""
        return self in _ERRORS

    @property
    def is_retryable(self) -> bool:
        """True for NOT_FOUND, TIMEOUT, TOO_MANY_REQUESTS, INTERNAL_ERROR and UNAVAILABLE."""
        return self in _RETRYABLE

    @classmethod
    def coerce(cls, value: object) -> Status:
        """Return `value` as a Status, accepting a Status or one of its integer codes.

        Raises:
            ValueError: `value` is not a known status code.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        codes = ", ".join(f"{s.name}={int(s)}" for s in cls)
        raise ValueError(
            f"status must be a pywork.Status or one of its codes ({codes}), got {value!r}"
        )


_ERRORS = frozenset(s for s in Status if s is Status.TIMEOUT or 500 <= s < 600)
_RETRYABLE = frozenset(
    {
        Status.NOT_FOUND,
        Status.TIMEOUT,
        Status.TOO_MANY_REQUESTS,
        Status.INTERNAL_ERROR,
        Status.UNAVAILABLE,
    }
)
