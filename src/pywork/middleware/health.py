"""Health check: the share of failed executions, over a time window or the last N requests.

``with_health_check(health)`` records the final status of every execution in a
:class:`HealthCheck`; ``health.status`` is 200 while the worker is healthy and 500 once
the share of error statuses (``Status.is_error``: TIMEOUT and every 5xx) exceeds
``error_percentage``. The ops app serves it as ``GET /ready``.

``health.set_status(status)`` overrides the verdict (maintenance mode, go-work's
``SetStatus``) until ``health.set_status(None)`` returns to the computed one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from pywork._durations import duration
from pywork.job import Job
from pywork.middleware._common import final_status, mark
from pywork.status import Status
from pywork.types import Adapter, Handler

__all__ = ["HealthCheck", "HealthSnapshot", "with_health_check"]

#: Time-window mode splits the window in this many buckets: counts are exact per
#: bucket, so the window's edge is precise to window/_BUCKETS seconds.
_BUCKETS = 60
_OK = Status.SUCCESS
_DOWN = Status.INTERNAL_ERROR


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """The counts a health decision was made on.

    Attributes:
        status: 200 (healthy) or 500 (unhealthy).
        requests: executions counted (in the window, or among the last N).
        errors: those whose status ``is_error``.
    """

    status: Status
    requests: int
    errors: int

    @property
    def error_share(self) -> float:
        """``errors / requests`` (0.0 without requests)."""
        return self.errors / self.requests if self.requests else 0.0


class HealthCheck:
    """Tracks the share of failed executions and says whether the worker is healthy.

    Unhealthy when at least `min_requests` requests are counted and the share of
    error statuses among them exceeds `error_percentage`. Requests are counted over
    the last `window` seconds or, when `last_requests` is set, over the last
    `last_requests` executions (then `window` is not used). The decision is
    recomputed at most every `tick` seconds (0 = on every read of :attr:`status`).

    It is thread-safe; recording takes a lock for a few operations, never across a
    handler. One HealthCheck may be shared by several workers.

    Args:
        error_percentage: a fraction in [0, 1] (0.7 = 70 %). The default 1.0 never
            trips, as in go-work.
        window: seconds (or a timedelta) of history in time-window mode.
        last_requests: count the last N executions instead of a time window.
        min_requests: fewer counted requests than this is always healthy.
        tick: seconds between recomputations.
        clock: a monotonic clock in seconds (for tests); default ``time.monotonic``.

    Raises:
        TypeError, ValueError: an argument is out of range.
    """

    def __init__(
        self,
        *,
        error_percentage: float = 1.0,
        window: float | timedelta = 300.0,
        last_requests: int | None = None,
        min_requests: int = 5,
        tick: float | timedelta = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(error_percentage, bool) or not isinstance(error_percentage, int | float):
            raise TypeError(
                f"error_percentage must be a fraction between 0 and 1, got {error_percentage!r}"
            )
        if not 0.0 <= error_percentage <= 1.0:
            raise ValueError(
                "error_percentage must be a fraction between 0 and 1 (0.7 means 70 %), "
                f"got {error_percentage!r}"
            )
        self.window = duration(window, "window", allow_zero=False)
        if last_requests is not None and (
            isinstance(last_requests, bool) or not isinstance(last_requests, int)
        ):
            raise TypeError(f"last_requests must be None or an int >= 1, got {last_requests!r}")
        if last_requests is not None and last_requests < 1:
            raise ValueError(f"last_requests must be None or an int >= 1, got {last_requests!r}")
        if isinstance(min_requests, bool) or not isinstance(min_requests, int):
            raise TypeError(f"min_requests must be an int >= 0, got {min_requests!r}")
        if min_requests < 0:
            raise ValueError(f"min_requests must be an int >= 0, got {min_requests!r}")
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, got {clock!r}")
        self.error_percentage = float(error_percentage)
        self.last_requests = last_requests
        self.min_requests = min_requests
        self.tick = duration(tick, "tick")
        self._clock = clock
        self._lock = threading.Lock()
        self._next_check = float("-inf")
        self._snapshot = HealthSnapshot(_OK, 0, 0)
        self._override: Status | None = None
        if last_requests is not None:  # last-N mode: a ring of outcomes
            self._ring = bytearray(last_requests)
            self._recorded = 0
            self._ring_errors = 0
        else:  # time-window mode: per-bucket counts, a bucket reused once it is stale
            self._width = self.window / _BUCKETS
            self._epochs = [-1] * _BUCKETS
            self._totals = [0] * _BUCKETS
            self._errors = [0] * _BUCKETS

    # hot path -----------------------------------------------------------------
    def record(self, status: Status) -> None:
        """Count one finished execution with `status` (called by ``with_health_check``)."""
        failed = 1 if status.is_error else 0
        if self.last_requests is not None:
            with self._lock:
                slot = self._recorded % self.last_requests
                self._ring_errors += failed - self._ring[slot]
                self._ring[slot] = failed
                self._recorded += 1
            return
        epoch = int(self._clock() / self._width)
        slot = epoch % _BUCKETS
        with self._lock:
            if self._epochs[slot] != epoch:
                self._epochs[slot] = epoch
                self._totals[slot] = 0
                self._errors[slot] = 0
            self._totals[slot] += 1
            self._errors[slot] += failed

    # the manual override ----------------------------------------------------------
    def set_status(self, status: Status | int | None) -> None:
        """Force :attr:`status` to `status` (e.g. ``Status.UNAVAILABLE`` for
        maintenance: ``/ready`` answers DOWN), whatever is recorded; None returns to the
        computed health at once. Recording goes on meanwhile.

        Raises:
            TypeError: `status` is not a Status, an int or None.
            ValueError: the int is not a pywork status code.
        """
        if status is None:
            self._override = None
            self._next_check = float("-inf")  # recompute on the next read
            return
        if isinstance(status, bool) or not isinstance(status, int):
            raise TypeError(f"status must be a pywork.Status, an int or None, got {status!r}")
        self._override = Status(status)

    # reading ------------------------------------------------------------------
    @property
    def status(self) -> Status:
        """``Status.SUCCESS`` (200) when healthy, ``Status.INTERNAL_ERROR`` (500) when not."""
        return self.snapshot().status

    @property
    def healthy(self) -> bool:
        """True when :attr:`status` is 200."""
        return self.snapshot().status is _OK

    def snapshot(self) -> HealthSnapshot:
        """The latest decision and its counts (recomputed when `tick` has passed); with
        an override (:meth:`set_status`), its status and the latest counts."""
        override = self._override
        if override is not None:
            return HealthSnapshot(override, self._snapshot.requests, self._snapshot.errors)
        now = self._clock()
        if now < self._next_check:
            return self._snapshot
        with self._lock:
            requests, errors = self._count(now)
            self._next_check = now + self.tick
        unhealthy = (
            requests > 0
            and requests >= self.min_requests
            and errors / requests > self.error_percentage
        )
        snapshot = HealthSnapshot(_DOWN if unhealthy else _OK, requests, errors)
        self._snapshot = snapshot
        return snapshot

    def _count(self, now: float) -> tuple[int, int]:
        if self.last_requests is not None:
            return min(self._recorded, self.last_requests), self._ring_errors
        oldest = int(now / self._width) - _BUCKETS + 1
        requests = errors = 0
        for slot, epoch in enumerate(self._epochs):
            if epoch >= oldest:
                requests += self._totals[slot]
                errors += self._errors[slot]
        return requests, errors

    def __repr__(self) -> str:
        mode = (
            f"last_requests={self.last_requests}"
            if self.last_requests is not None
            else f"window={self.window:g}s"
        )
        shown = self._override or self._snapshot.status
        return (
            f"<HealthCheck {shown.value} {mode} "
            f"error_percentage={self.error_percentage:g} min_requests={self.min_requests}>"
        )


def with_health_check(health: HealthCheck) -> Adapter:
    """Adapter recording the final status of every execution in `health`.

    Cancelled runs count as requests with status CANCELLED (not an error). The adapter
    carries ``pywork_instruments = ("health", health)``: ``pywork worker --http`` then
    serves `health` on ``/ready`` instead of adding a HealthCheck of its own.

    Raises:
        TypeError: `health` is not a HealthCheck.
    """
    if not isinstance(health, HealthCheck):
        raise TypeError(f"with_health_check needs a pywork.middleware.HealthCheck, got {health!r}")
    record = health.record

    def adapter(inner: Handler) -> Handler:
        async def health_check(job: Job) -> None:
            try:
                await inner(job)
            except BaseException as exc:
                ctx = job.ctx
                if ctx is not None:
                    record(final_status(ctx, exc))
                raise
            ctx = job.ctx
            if ctx is not None:
                record(ctx.status)

        return health_check

    return mark(adapter, "health", health)
