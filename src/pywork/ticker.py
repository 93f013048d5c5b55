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
    from pywork.brokers.base import ScheduleRecord, ScheduleStore
    from pywork.cron import Plan

    _Logger = logging.Logger | logging.LoggerAdapter[Any]

__all__ = ["FIRE_CONCURRENCY", "MAX_SLEEP", "fire_due", "run_ticker"]

#: The longest a ticker sleeps before looking at the schedules again.
MAX_SLEEP = 1.0
#: Due schedules fired at once (each fire is one independent compare-and-set).
FIRE_CONCURRENCY = 8
_ERROR_BACKOFF = (0.1, 5.0)


async def fire_due(broker: ScheduleStore, logger: _Logger) -> float:
    """Fire every due schedule once; return the seconds until the next one is due.

    Up to :data:`FIRE_CONCURRENCY` fires run at once: each is an independent atomic
    compare-and-set, so a burst of due schedules costs a few round trips, not one each.
    """
    at = cron.now()
    due, earliest = await broker.due_schedules(at)
    plans = [(record, record.spec.plan(record.next_run_at, at)) for record in due]
    gate = asyncio.Semaphore(FIRE_CONCURRENCY)

    async def fire(record: ScheduleRecord, plan: Plan) -> None:
        spec = record.spec
        jobs = [spec.job_for(record.name, record.job, tick) for tick in plan.ticks]
        async with gate:
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

    results = await asyncio.gather(
        *(fire(record, plan) for record, plan in plans if plan is not None),
        return_exceptions=True,
    )
    for _, plan in plans:
        if plan is not None and (earliest is None or plan.next_run_at < earliest):
            earliest = plan.next_run_at
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
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
