"""Helpers shared by the built-in adapters and the ops app (private)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from pywork.errors import status_for
from pywork.job import Context
from pywork.status import Status
from pywork.types import Adapter

__all__ = ["MARK", "final_status", "mark", "marked", "missing_extra"]

#: The attribute a built-in adapter carries to say what it instruments, so that
#: ``pywork worker --http`` adds no second one (docs/observability.md):
#: ``("prometheus", registry)`` on ``with_prometheus()``'s, ``("health", health_check)``
#: on ``with_health_check()``'s.
MARK = "pywork_instruments"


def mark(adapter: Adapter, kind: str, value: Any) -> Adapter:
    """Give `adapter` the :data:`MARK` attribute ``(kind, value)``; return it."""
    vars(adapter)[MARK] = (kind, value)
    return adapter


def marked(adapters: Iterable[Adapter], kind: str) -> list[Any]:
    """The values of the adapters among `adapters` marked `kind`, in order."""
    found = []
    for adapter in adapters:
        value = getattr(adapter, MARK, None)
        if isinstance(value, tuple) and len(value) == 2 and value[0] == kind:
            found.append(value[1])
    return found


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
