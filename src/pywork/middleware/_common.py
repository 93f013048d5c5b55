"""Helpers shared by the built-in adapters and the ops app (private)."""

from __future__ import annotations

import asyncio

from pywork.errors import JobError
from pywork.job import Context
from pywork.status import Status

__all__ = ["final_status", "missing_extra"]

_CANCELLED = Status.CANCELLED
_INTERNAL_ERROR = Status.INTERNAL_ERROR


def final_status(ctx: Context, exc: BaseException | None = None) -> Status:
    """The status the execution ends with, seen from an adapter whose inner call ended.

    Without `exc` it is ``ctx.status`` (the outcome rules have set it). With `exc`
    (something inside raised through the adapter) it is what the worker will record,
    so that adapters report the same status the Execution shows: CANCELLED for a
    cancellation, the error's status for a JobError, INTERNAL_ERROR for any other
    exception.
    """
    if exc is None:
        return ctx.status
    if isinstance(exc, asyncio.CancelledError):
        return _CANCELLED
    if isinstance(exc, JobError):
        return exc.status
    if isinstance(exc, Exception):
        return _INTERNAL_ERROR
    return ctx.status


def missing_extra(what: str, module: str, extra: str) -> ImportError:
    """An ImportError telling which extra to install for `what`."""
    return ImportError(
        f'{what} needs the {module} package, which is not installed: pip install "pywork[{extra}]"'
    )
