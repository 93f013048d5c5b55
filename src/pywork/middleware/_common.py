"""Helpers shared by the built-in adapters and the ops app (private)."""

from __future__ import annotations

import asyncio

from pywork.errors import status_for
from pywork.job import Context
from pywork.status import Status

__all__ = ["final_status", "missing_extra"]


def final_status(ctx: Context, exc: BaseException | None = None) -> Status:
    """The status the execution ends with, seen from an adapter whose inner call ended.

    Without `exc` it is ``ctx.status`` (the outcome rules have set it). With `exc`
    (something inside raised through the adapter) it is what the worker will record,
    so that adapters report the same status the Execution shows
    (:func:`pywork.status_for`). A BaseException the worker does not catch
    (KeyboardInterrupt, SystemExit) leaves ``ctx.status``.
    """
    if exc is None or not isinstance(exc, Exception | asyncio.CancelledError):
        return ctx.status
    return status_for(exc)


def missing_extra(what: str, module: str, extra: str) -> ImportError:
    """An ImportError telling which extra to install for `what`."""
    return ImportError(
        f'{what} needs the {module} package, which is not installed: pip install "pywork[{extra}]"'
    )
