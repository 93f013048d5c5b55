"""Durable brokers and :func:`connect`, which picks one by URL scheme.

Every backend is a :class:`~pywork.brokers.front.BrokerFront` (argument checks, encoding,
records and error mapping, shared) over its own storage primitives, one module or small
package each, none importing another: ``memory://`` (in-process, the reference),
``sqlite:///file.db`` (the embedded default), ``redis://`` / ``rediss://``
(``pywork[redis]``), ``postgresql://`` / ``postgres://`` (``pywork[postgres]``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Generator
from types import TracebackType
from typing import Any

from pywork._durations import duration
from pywork.brokers.base import (
    Broker,
    Delivery,
    JobRecord,
    JobState,
    Outcome,
    QueueStats,
    ScheduleRecord,
)
from pywork.brokers.front import BrokerFront, mask_url

__all__ = [
    "DEFAULT_URL",
    "Broker",
    "BrokerFront",
    "Delivery",
    "JobRecord",
    "JobState",
    "Outcome",
    "QueueStats",
    "ScheduleRecord",
    "connect",
    "mask_url",
]

#: Used when neither an url nor the PYWORK_BROKER environment variable is given.
DEFAULT_URL = "sqlite:///pywork.db"

# scheme -> (module, class, extra to install)
_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("pywork.brokers.memory", "MemoryBroker", None),
    "sqlite": ("pywork.brokers.sqlite", "SQLiteBroker", None),
    "redis": ("pywork.brokers.redis", "RedisBroker", "redis"),
    "rediss": ("pywork.brokers.redis", "RedisBroker", "redis"),
    "postgresql": ("pywork.brokers.postgres", "PostgresBroker", "postgres"),
    "postgres": ("pywork.brokers.postgres", "PostgresBroker", "postgres"),
}


def _backend(url: str) -> type[Any]:
    if not isinstance(url, str) or not url:
        raise TypeError(f"broker url must be a non-empty str, got {url!r}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _BACKENDS:
        supported = ", ".join(f"{s}://" for s in _BACKENDS)
        raise ValueError(
            f"unknown broker url scheme in {mask_url(url)!r}; supported schemes: {supported}"
        )
    module_name, class_name, extra = _BACKENDS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None:
            raise
        raise ImportError(
            f'the {scheme}:// broker needs an extra: pip install "pywork[{extra}]" ({exc})'
        ) from exc
    backend: type[Any] = getattr(module, class_name)
    return backend


class _Connect:
    """What :func:`connect` returns: awaitable, and an async context manager."""

    def __init__(self, url: str, retention: float) -> None:
        self._backend = _backend(url)
        self._url = url
        self._retention = retention
        self._broker: Broker | None = None

    async def _open(self) -> Broker:
        broker: Broker = await self._backend.from_url(self._url, retention=self._retention)
        return broker

    def __await__(self) -> Generator[Any, None, Broker]:
        return self._open().__await__()

    async def __aenter__(self) -> Broker:
        self._broker = await self._open()
        return self._broker

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._broker is not None:
            await self._broker.close()


def connect(url: str | None = None, *, retention: float = 3600.0) -> _Connect:
    """Connect to the broker at `url`: ``broker = await connect(url)`` or
    ``async with connect(url) as broker:``.

    Args:
        url: ``memory://[NAME]``, ``sqlite:///relative.db``, ``sqlite:////absolute.db``,
            ``redis://host:port/db``, ``rediss://…``, ``postgresql://…``, ``postgres://…``.
            Default: the ``PYWORK_BROKER`` environment variable, else ``sqlite:///pywork.db``.
        retention: seconds the records of succeeded and cancelled jobs are kept (0 = not kept).

    Raises:
        ValueError: unknown scheme (the message lists the supported ones) or bad retention.
        ImportError: the backend's extra is not installed (the message names it).
    """
    if url is None:
        url = os.environ.get("PYWORK_BROKER") or DEFAULT_URL
    return _Connect(url, duration(retention, "retention"))
