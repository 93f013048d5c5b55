"""SyncBroker: every broker call as a blocking call, for Django, Flask and scripts.

``pywork.connect_sync(url)`` opens the same broker :func:`pywork.connect` would, inside
an event loop that runs in a thread of its own, and returns a :class:`SyncBroker` whose
methods have the names, arguments, results and errors of the async broker's. One
SyncBroker is safe to share between the threads of a web server: each call is handed to
the loop thread (``asyncio.run_coroutine_threadsafe``) and waited for, and the broker's
connection pool serves concurrent calls.

Create it once per process (at import or app start-up) and close it at exit, or use it as
a context manager. After ``os.fork()`` the child has no loop thread: connect again there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

from pywork._durations import duration
from pywork.brokers import Broker, JobRecord, QueueStats, ScheduleRecord, connect
from pywork.errors import BrokerClosed
from pywork.job import Job

__all__ = ["SyncBroker", "connect_sync"]

T = TypeVar("T")


class SyncBroker:
    """A broker whose methods block (see the module docstring); make it with
    :func:`connect_sync`.

    Attributes:
        broker: the async broker underneath (use it only from the loop thread).
        url: its url.
    """

    def __init__(self, url: str | None = None, *, retention: float | timedelta = 3600.0) -> None:
        seconds = duration(retention, "retention")
        connecting = connect(url, retention=seconds)  # a bad url or extra raises here
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pywork-sync-broker", daemon=True
        )
        self._thread.start()
        self._closed = False
        self._lock = threading.Lock()

        async def open_() -> Broker:
            return await connecting

        try:
            self.broker = asyncio.run_coroutine_threadsafe(open_(), self._loop).result()
        except BaseException:
            self._stop_loop()
            raise
        self.url = self.broker.url

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a SyncBroker call from its own loop thread would deadlock")
        if self._closed:
            coro.close()
            raise BrokerClosed(f"{self!r} is closed")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def __repr__(self) -> str:
        return f"<SyncBroker over {self.broker!r}>" if hasattr(self, "broker") else "<SyncBroker>"

    # lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        """Close the broker and end the loop thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self.broker.close(), self._loop).result()
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # §7 -----------------------------------------------------------------------------
    def enqueue(
        self, job: Job, *, at: datetime | None = None, delay: float | timedelta | None = None
    ) -> str:
        """Store `job` and return its id (see :meth:`pywork.Broker.enqueue`)."""
        return self._call(self.broker.enqueue(job, at=at, delay=delay))

    def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """Store `jobs`, all or nothing (see :meth:`pywork.Broker.enqueue_many`)."""
        return self._call(self.broker.enqueue_many(jobs))

    def get(self, job_id: str) -> JobRecord | None:
        """The record of `job_id`, or None."""
        return self._call(self.broker.get(job_id))

    def wait(self, job_id: str, *, timeout: float | timedelta | None = None) -> JobRecord:
        """The record of `job_id` once it is finished (see :meth:`pywork.Broker.wait`)."""
        return self._call(self.broker.wait(job_id, timeout=timeout))

    def cancel(self, job_id: str) -> bool:
        """Cancel a live job; True if this call did it."""
        return self._call(self.broker.cancel(job_id))

    def stats(self) -> dict[str, QueueStats]:
        """Per-queue counts of jobs in each state."""
        return self._call(self.broker.stats())

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[JobRecord]:
        """Dead jobs, oldest death first (`limit` 1..1000)."""
        return self._call(self.broker.dead_letters(queue, limit))

    def retry_dead(self, job_id: str) -> bool:
        """Queue a dead job again; True if it was dead."""
        return self._call(self.broker.retry_dead(job_id))

    def purge_dead(self, queue: str | None = None) -> int:
        """Delete dead jobs; how many."""
        return self._call(self.broker.purge_dead(queue))

    # §9 -----------------------------------------------------------------------------
    def schedule(
        self,
        name: str,
        job: Job,
        *,
        every: float | timedelta | None = None,
        cron: str | None = None,
        timezone: str = "UTC",
        jitter: float | timedelta = 0.0,
        misfire: str = "skip",
    ) -> ScheduleRecord:
        """Declare (or redeclare) a cluster schedule (see :meth:`pywork.Broker.schedule`)."""
        return self._call(
            self.broker.schedule(
                name, job, every=every, cron=cron, timezone=timezone, jitter=jitter,
                misfire=misfire,
            )
        )  # fmt: skip

    def unschedule(self, name: str) -> bool:
        """Delete the schedule `name`; True if it existed."""
        return self._call(self.broker.unschedule(name))

    def schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by name."""
        return self._call(self.broker.schedules())


def connect_sync(url: str | None = None, *, retention: float | timedelta = 3600.0) -> SyncBroker:
    """Open the broker at `url` for blocking use: ``broker = connect_sync(url)`` or
    ``with connect_sync(url) as broker:``.

    Args:
        url: as for :func:`pywork.connect` (default: ``PYWORK_BROKER``, else
            ``sqlite:///pywork.db``).
        retention: seconds the records of succeeded and cancelled jobs are kept.

    Raises:
        ValueError, TypeError, ImportError: as :func:`pywork.connect`.
        BrokerUnavailable: the broker cannot be reached.
    """
    return SyncBroker(url, retention=retention)
