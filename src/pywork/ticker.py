"""The schedule ticker every consumer runs: fires due cluster schedules (contract §9).

No leader and no beat process: each consumer sleeps until the earliest ``next_run_at``
(at most :data:`MAX_SLEEP` seconds, to see schedules other processes declare), computes
the due ticks with :meth:`ScheduleSpec.plan`, and asks the broker to :meth:`fire` them
with one atomic compare-and-set on ``next_run_at``. Only the winner enqueues the
ticks' jobs, so each tick produces exactly one job whatever the number of consumers,
their clock skew, or restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from pywork import cron

if TYPE_CHECKING:
    from pywork.brokers.base import ScheduleStore

    _Logger = logging.Logger | logging.LoggerAdapter[Any]

__all__ = ["MAX_SLEEP", "fire_due", "run_ticker"]

#: The longest a ticker sleeps before looking at the schedules again.
MAX_SLEEP = 1.0
_ERROR_BACKOFF = (0.1, 5.0)


async def fire_due(broker: ScheduleStore, logger: _Logger) -> float:
    """Fire every due schedule once; return the seconds until the next one is due."""
    at = cron.now()
    due, earliest = await broker.due_schedules(at)
    for record in due:
        spec = record.spec
        plan = spec.plan(record.next_run_at, at)
        if plan is None:
            continue
        jobs = [spec.job_for(record.name, record.job, tick) for tick in plan.ticks]
        won = await broker.fire(
            record.name, record.next_run_at, plan.next_run_at, plan.ticks[-1], jobs
        )
        if won:
            logger.info(
                "schedule %s fired %d tick(s), latest %s",
                record.name,
                len(plan.ticks),
                plan.ticks[-1].isoformat(),
            )
        if earliest is None or plan.next_run_at < earliest:
            earliest = plan.next_run_at
    if earliest is None:
        return MAX_SLEEP
    return max(0.0, (earliest - cron.now()).total_seconds())


async def run_ticker(broker: ScheduleStore, stopping: asyncio.Event, logger: _Logger) -> None:
    """Fire due schedules until `stopping` is set; broker errors are retried with backoff."""
    failures = 0
    while not stopping.is_set():
        try:
            sleep = min(await fire_due(broker, logger), MAX_SLEEP)
            failures = 0
        except Exception as exc:
            failures += 1
            sleep = min(_ERROR_BACKOFF[1], _ERROR_BACKOFF[0] * 2**failures)
            logger.warning(
                "firing schedules failed (%s: %s); retrying in %.1fs",
                type(exc).__name__,
                exc,
                sleep,
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), sleep)
