"""Cluster schedules: validation and tick arithmetic shared by every broker (contract §9).

A broker stores each schedule's ``next_run_at``; every consumer computes, with
:meth:`ScheduleSpec.plan`, which ticks are due and what the next run time becomes, and
asks the broker to fire them with one atomic compare-and-set on ``next_run_at``. Only
the consumer whose compare-and-set wins enqueues the ticks' jobs, so each tick fires
once whatever the number of consumers.

- ``every`` schedules lie on a grid: tick k is ``next_run_at + k*every``; firing
  latency never shifts it.
- ``cron`` schedules (5 fields, via croniter) are computed in the schedule's time zone,
  so ``0 9 * * *`` in ``Europe/Berlin`` fires at 09:00 local time across DST changes.
- When several ticks are due, ``misfire="skip"`` fires the latest only and
  ``misfire="all"`` the latest ``min(n, 100)``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pywork._durations import duration, optional_duration
from pywork.encoding import encode_job
from pywork.job import MAX_NAME_LENGTH, Job

__all__ = [
    "MAX_CATCH_UP",
    "MISFIRE_POLICIES",
    "Plan",
    "ScheduleSpec",
    "check_schedule_name",
    "declare",
    "from_micros",
    "now",
    "tick_key",
    "to_micros",
]

#: The most ticks ``misfire="all"`` fires at once.
MAX_CATCH_UP = 100
MISFIRE_POLICIES = ("skip", "all")
_CRON_FIELDS = ("minute", "hour", "day of month", "month", "day of week")


def _utc_now() -> datetime:
    return datetime.now(UTC)


#: The clock of the schedule firing (aware UTC). Tests replace it to skew a consumer.
now: Callable[[], datetime] = _utc_now


def to_micros(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact compare-and-set)."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """The inverse of :func:`to_micros`, in UTC."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


def tick_key(name: str, tick: datetime) -> str:
    """The uniqueness key of a tick's job: ``f"{name}@{tick.isoformat()}"`` with tick in UTC."""
    return f"{name}@{tick.astimezone(UTC).isoformat()}"


@dataclass(frozen=True, slots=True)
class Plan:
    """What firing a due schedule does: the ticks to enqueue and the next run time."""

    ticks: list[datetime]
    next_run_at: datetime


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A validated schedule definition (what ``broker.schedule`` was given)."""

    every: float | None
    cron: str | None
    timezone: str
    jitter: float
    misfire: str

    @classmethod
    def create(
        cls,
        *,
        every: float | timedelta | None = None,
        cron: str | None = None,
        timezone: str = "UTC",
        jitter: float | timedelta = 0.0,
        misfire: str = "skip",
    ) -> ScheduleSpec:
        """Validate the arguments of ``broker.schedule``.

        Raises:
            ValueError: not exactly one of every/cron, ``every <= 0``, an invalid crontab
                (naming the field), ``jitter < 0``, an unknown time zone, or `misfire`
                not in {"skip", "all"}.
            TypeError: an argument has the wrong type.
        """
        if (every is None) == (cron is None):
            raise ValueError("give exactly one of every= (seconds) or cron= (5-field crontab)")
        seconds = optional_duration(every, "every", allow_zero=False)
        if cron is not None:
            cron = validate_cron(cron)
        if not isinstance(timezone, str) or not timezone:
            raise TypeError(
                f"timezone must be an IANA name such as 'Europe/Paris', got {timezone!r}"
            )
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown timezone {timezone!r}; use an IANA name such as 'UTC' or 'Europe/Paris'"
            ) from exc
        spread = duration(jitter, "jitter")
        if misfire not in MISFIRE_POLICIES:
            raise ValueError(f"misfire must be 'skip' or 'all', got {misfire!r}")
        return cls(seconds, cron, timezone, spread, misfire)

    def same_timing(self, other: ScheduleSpec) -> bool:
        """True when redeclaring `other` as self keeps the stored ``next_run_at``."""
        return (self.every, self.cron, self.timezone) == (other.every, other.cron, other.timezone)

    def first_run(self, at: datetime) -> datetime:
        """The first tick of a schedule declared at `at` (declaring never fires a run)."""
        if self.every is not None:
            return at + timedelta(seconds=self.every)
        return self._cron_after(at)

    def plan(self, next_run_at: datetime, at: datetime) -> Plan | None:
        """The ticks due at `at` (after the misfire policy) and the new next run time,
        or None when nothing is due yet."""
        if next_run_at > at:
            return None
        if self.every is not None:
            step = timedelta(seconds=self.every)
            late = (at - next_run_at).total_seconds()
            due = math.floor(late / self.every) + 1  # ticks next_run_at + k*step, k < due
            keep = 1 if self.misfire == "skip" else min(due, MAX_CATCH_UP)
            ticks = [next_run_at + k * step for k in range(due - keep, due)]
            return Plan(ticks, next_run_at + due * step)
        keep = 1 if self.misfire == "skip" else MAX_CATCH_UP
        latest: list[datetime] = []
        tick = self._cron_at_or_before(at)
        while tick >= next_run_at and len(latest) < keep:
            latest.append(tick)
            tick = self._cron_before(tick)
        if not latest:  # next_run_at was not on the crontab (e.g. it changed): fire it anyway
            latest.append(next_run_at)
        return Plan(sorted(latest), self._cron_after(at))

    def job_for(self, name: str, job: Job, tick: datetime) -> tuple[Job, float | None]:
        """A tick's job (a copy with a new id and the tick key) and its jitter delay."""
        fired = job.copy()
        fired.key = tick_key(name, tick)
        delay = random.uniform(0.0, self.jitter) if self.jitter > 0 else None
        return fired, delay

    # cron ------------------------------------------------------------------------
    def _iter(self, start: datetime) -> Any:
        from croniter import croniter

        return croniter(self.cron, start.astimezone(ZoneInfo(self.timezone)))

    def _cron_after(self, at: datetime) -> datetime:
        ticks = self._iter(at)
        while True:
            tick: datetime = ticks.get_next(datetime)
            if not self._repeated(tick):
                return tick.astimezone(UTC)

    def _cron_before(self, at: datetime) -> datetime:
        ticks = self._iter(at)
        while True:
            tick: datetime = ticks.get_prev(datetime)
            if not self._repeated(tick):
                return tick.astimezone(UTC)

    def _cron_at_or_before(self, at: datetime) -> datetime:
        return self._cron_before(at + timedelta(seconds=1) - timedelta(microseconds=at.microsecond))

    def _repeated(self, tick: datetime) -> bool:
        """True for the second occurrence of a wall time repeated when clocks go back,
        for crontabs at fixed hours (``30 2 * * *`` runs once that night, as cron does;
        ``*/30 * * * *`` keeps running every 30 minutes)."""
        assert self.cron is not None
        if tick.fold != 1 or tick.replace(fold=0).utcoffset() == tick.utcoffset():
            return False
        hour = self.cron.split()[1]
        return "*" not in hour and "/" not in hour


def check_schedule_name(name: object) -> str:
    """Return `name` if it is a valid schedule name (a non-empty str of at most
    :data:`~pywork.job.MAX_NAME_LENGTH` characters: it is part of every tick's job key).

    Raises:
        TypeError: not a str.
        ValueError: empty or too long.
    """
    if not isinstance(name, str):
        raise TypeError(f"schedule name must be a str, got {name!r}")
    if not name:
        raise ValueError("schedule name must be a non-empty str")
    if len(name) > MAX_NAME_LENGTH - 40:  # room for the tick in f"{name}@{tick}"
        raise ValueError(
            f"schedule names are at most {MAX_NAME_LENGTH - 40} characters, got {len(name)}"
        )
    return name


def declare(
    name: object,
    job: object,
    *,
    every: float | timedelta | None = None,
    cron: str | None = None,
    timezone: str = "UTC",
    jitter: float | timedelta = 0.0,
    misfire: str = "skip",
) -> tuple[ScheduleSpec, bytes]:
    """Validate a schedule declaration; return its spec and the job encoded for storage.

    Raises:
        TypeError, ValueError: an invalid name, job or timing (see :meth:`ScheduleSpec.create`).
        SerializationError: the job's args or headers cannot be encoded.
    """
    check_schedule_name(name)
    if not isinstance(job, Job):
        raise TypeError(f"job must be a pywork.Job, got {job!r}")
    spec = ScheduleSpec.create(
        every=every, cron=cron, timezone=timezone, jitter=jitter, misfire=misfire
    )
    return spec, encode_job(job)


def validate_cron(expression: str) -> str:
    """Return `expression` if it is a valid 5-field crontab.

    Raises:
        TypeError: not a str.
        ValueError: not exactly 5 fields, or a field is invalid (the message names it).
    """
    if not isinstance(expression, str):
        raise TypeError(
            f"cron must be a 5-field crontab str such as '*/5 * * * *', got {expression!r}"
        )
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"cron must have exactly 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)} in {expression!r}"
        )
    try:
        from croniter import croniter
    except ImportError as exc:
        raise ImportError('cron schedules need croniter: pip install "pywork[cron]"') from exc
    for index, name in enumerate(_CRON_FIELDS):
        probe = ["*"] * 5
        probe[index] = fields[index]
        if not croniter.is_valid(" ".join(probe)):
            raise ValueError(f"invalid {name} field {fields[index]!r} in cron {expression!r}")
    if not croniter.is_valid(expression):
        raise ValueError(f"invalid cron {expression!r}")
    return " ".join(fields)
