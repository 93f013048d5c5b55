"""Shared helpers of the core tests: waiting on conditions, counting concurrency, leak checks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll `predicate` on the event loop until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.002)


def wait_until_sync(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Like :func:`wait_until`, for a plain thread."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.002)


class Gauge:
    """Counts what runs at once (thread-safe) and keeps the high-water mark."""

    def __init__(self) -> None:
        self.current = 0
        self.high = 0
        self.total = 0
        self._lock = threading.Lock()

    @contextmanager
    def track(self) -> Iterator[None]:
        with self._lock:
            self.current += 1
            self.total += 1
            self.high = max(self.high, self.current)
        try:
            yield
        finally:
            with self._lock:
                self.current -= 1


def other_tasks() -> set[asyncio.Task[object]]:
    """The tasks of the running loop that are not done, besides the current one."""
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


def pywork_threads() -> list[threading.Thread]:
    """Live threads made by pywork's thread pools."""
    return [t for t in threading.enumerate() if t.name.startswith("pywork-") and t.is_alive()]
