"""Type aliases of the handler chain."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias

from pywork.job import Job

__all__ = ["Adapter", "AnyHandler", "Handler", "SyncHandler"]

#: An async handler: does the work of one job and sets its status.
Handler: TypeAlias = Callable[[Job], Awaitable[None]]
#: A plain function handler; run in a thread pool, never on the event loop.
SyncHandler: TypeAlias = Callable[[Job], None]
#: What ``register`` and ``adapt`` accept.
AnyHandler: TypeAlias = Handler | SyncHandler
#: Middleware: wraps a handler in another handler.
Adapter: TypeAlias = Callable[[Handler], Handler]
