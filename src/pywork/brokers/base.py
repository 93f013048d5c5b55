"""The Broker protocol every durable backend implements, and the records it returns.

A broker stores jobs and leases them to consumers. The producer side (``enqueue``,
``get``, ``cancel``, ``stats``, dead letters) is the public contract; the consumer
side (``claim``, ``wait_for_work``, ``renew``, ``settle``) is what :meth:`Worker.consume`
drives. Every backend is a :class:`~pywork.brokers.front.BrokerFront` (which validates,
encodes and builds these records) over its own storage primitives; this module holds
the protocol and the records the front and the backends exchange.

Lifecycle of a job::

    enqueue ──> queued ───────────────claim──> running ──settle──> succeeded
           └──> scheduled ──(due)──> queued       │   ├─────────> failed ──(backoff due)──> queued
                                                  │   ├─────────> dead      (retry_dead ──> queued)
                                                  │   └─────────> queued    (released at shutdown)
                                   (lease expired)└──> queued / dead (attempt counted)
    cancel: queued / scheduled / failed / running ──> cancelled
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple, Protocol, runtime_checkable

from pywork.cron import ScheduleSpec
from pywork.job import Job, Progress
from pywork.status import Status

__all__ = [
    "LEASE_EXPIRED",
    "Broker",
    "Claimed",
    "Delivery",
    "JobRecord",
    "JobState",
    "NewJob",
    "Outcome",
    "QueueStats",
    "ScheduleRecord",
    "ScheduleStore",
    "StoredJob",
    "StoredSchedule",
]

#: The error of a job dead because its lease expired too often: ``prefix + attempts + suffix``.
#: Every backend builds it in storage from these two parts, so the texts never drift apart.
LEASE_EXPIRED = (
    "JobTimeout: lease expired ",
    " times (its consumer stopped renewing it: crashed, killed or stalled)",
)


class JobState(StrEnum):
    """Where a job is in its lifecycle."""

    QUEUED = "queued"  # ready to be claimed
    SCHEDULED = "scheduled"  # waiting for its at/delay
    RUNNING = "running"  # leased to a consumer
    FAILED = "failed"  # an attempt failed; a retry waits for its backoff
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What a broker knows of one job."""

    id: str
    handler: str
    queue: str
    args: dict[str, Any]
    state: JobState
    status: Status | None
    attempts: int
    error: str | None
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    key: str | None = None
    run_at: datetime | None = None  # when a scheduled or failed job becomes ready
    result: Any = None  # what the handler of a succeeded job returned (decoded JSON)
    progress: Progress | None = None  # the latest ctx.set_progress report


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The number of a queue's jobs in each state now."""

    queued: int = 0
    scheduled: int = 0
    running: int = 0
    failed: int = 0
    succeeded: int = 0
    dead: int = 0
    cancelled: int = 0


@dataclass(slots=True)
class Delivery:
    """A job leased to one consumer.

    Attributes:
        id: the job id.
        token: the fencing token of this lease; only its holder may settle the job.
        attempt: this run's attempt number (1 for the first run).
        job: the decoded job, or None when the stored message could not be decoded.
        error: why decoding failed, when `job` is None.
    """

    id: str
    token: str
    attempt: int
    job: Job | None
    error: str | None = None


@dataclass(slots=True)
class Outcome:
    """How a delivery ended, for :meth:`Broker.settle`.

    `state` is SUCCEEDED, FAILED (retry after `retry_in` seconds), DEAD, or QUEUED
    (released untouched at shutdown: the attempt is not counted). `result` (SUCCEEDED
    only) and `progress` are stored with the record when given.
    """

    delivery: Delivery
    state: JobState
    status: Status | None = None
    error: str | None = None
    retry_in: float | None = None
    result: bytes | None = None  # the encoded result of a succeeded run
    progress: bytes | None = None  # the encoded latest progress, when not yet stored


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A cluster schedule stored in a broker (contract §9).

    Attributes:
        name: the schedule's unique name.
        job: the declared job; each tick enqueues a copy with a new id and the tick key.
        every: seconds between ticks, or None for a cron schedule.
        cron: the 5-field crontab, or None for an interval schedule.
        timezone: the IANA time zone the crontab is read in.
        next_run_at: the next tick (aware UTC).
        last_run_at: the latest fired tick (aware UTC), or None.
        jitter: each tick's job is delayed by a random 0..jitter seconds.
        misfire: "skip" (fire the latest due tick only) or "all" (the latest 100).
    """

    name: str
    job: Job
    every: float | None
    cron: str | None
    timezone: str
    next_run_at: datetime
    last_run_at: datetime | None
    jitter: float = 0.0
    misfire: str = "skip"

    @property
    def spec(self) -> ScheduleSpec:
        """The validated definition, for tick arithmetic."""
        return ScheduleSpec(self.every, self.cron, self.timezone, self.jitter, self.misfire)


class NewJob(NamedTuple):
    """A job on its way into storage, encoded by the front.

    ``at`` is when it becomes ready in epoch seconds (from the producer's clock) and
    ``delay`` seconds from now (on the storage's clock); both None: ready at once.
    """

    id: str
    queue: str
    handler: str
    key: str | None
    max_retries: int | None
    payload: bytes
    at: float | None = None
    delay: float | None = None


class StoredJob(NamedTuple):
    """A job as storage holds it; the front makes a :class:`JobRecord` of it.

    Times are epoch seconds; ``payload`` is the encoded job; ``state`` and ``status``
    are the stored values (a due scheduled/failed job is still "scheduled"/"failed":
    the front reports it as queued).
    """

    id: str
    handler: str
    queue: str
    payload: bytes | str
    state: str
    status: int | None
    attempts: int
    error: str | None
    enqueued_at: float
    started_at: float | None
    finished_at: float | None
    key: str | None
    run_at: float | None
    result: bytes | str | None = None  # encoded JSON
    progress: bytes | str | None = None  # encoded JSON (Progress.to_json)


class StoredSchedule(NamedTuple):
    """A cluster schedule as storage holds it (times as integer microseconds)."""

    name: str
    payload: bytes | str
    every: float | None
    cron: str | None
    timezone: str
    jitter: float
    misfire: str
    next_run_at: int
    last_run_at: int | None


class Claimed(NamedTuple):
    """One job a claim leased: the front decodes ``payload`` into a :class:`Delivery`."""

    id: str
    token: str
    attempt: int
    payload: bytes | str


class ScheduleStore(Protocol):
    """The cluster-schedule side of a broker (contract §9)."""

    async def schedule(
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
        """Declare (or redeclare) the schedule `name`; declaring never fires a run.

        Each tick enqueues a copy of `job` with a new id and the key ``f"{name}@{tick}"``.
        Exactly one of `every` (seconds) or `cron` (5 fields, read in `timezone`) is
        given; `jitter` delays each tick's job by a random 0..jitter seconds; `misfire`
        is "skip" (fire the latest due tick only) or "all" (the latest 100).
        Redeclaring with the same every/cron/timezone keeps ``next_run_at``, else it is
        ``spec.first_run(cron.now())``.

        Raises:
            TypeError, ValueError: an invalid name, job or timing (``cron.declare``).
            SerializationError: the job's args or headers cannot be encoded.
        """
        ...

    async def unschedule(self, name: str) -> bool:
        """Delete the schedule `name`; True if it existed."""
        ...

    async def schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by name."""
        ...

    async def due_schedules(self, at: datetime) -> tuple[list[ScheduleRecord], datetime | None]:
        """The schedules whose next_run_at <= `at`, and the earliest next_run_at of the
        others (None when there are none)."""
        ...

    async def fire(
        self,
        name: str,
        expected: datetime,
        next_run_at: datetime,
        last_run_at: datetime,
        jobs: Sequence[tuple[Job, float | None]],
    ) -> bool:
        """Atomically: if `name` still has ``next_run_at == expected`` (compare at
        microsecond precision, e.g. as ``cron.to_micros``), set its next_run_at and
        last_run_at and enqueue `jobs` (each with its delay in seconds or None; unique
        keys honoured). True if this call won the compare-and-set; False changes nothing."""
        ...


@runtime_checkable
class Broker(ScheduleStore, Protocol):
    """A durable job store with its cluster schedules. One module per backend implements it."""

    url: str
    retention: float

    # producer side (contract §7) ------------------------------------------------
    async def enqueue(
        self,
        job: Job,
        *,
        at: datetime | None = None,
        delay: float | timedelta | None = None,
        connection: Any = None,
    ) -> str:
        """Store `job` (durable once this returns) and return its id (see the contract).

        `connection` (PostgreSQL only, else TypeError): store it through the caller's
        asyncpg connection, inside its transaction."""
        ...

    async def enqueue_many(self, jobs: Sequence[Job], *, connection: Any = None) -> list[str]:
        """Store `jobs` in one round trip where the backend allows; all or nothing."""
        ...

    async def get(self, job_id: str) -> JobRecord | None:
        """The record of `job_id`, or None."""
        ...

    async def wait(self, job_id: str, *, timeout: float | timedelta | None = None) -> JobRecord:
        """The record of `job_id` once it is finished (succeeded, dead or cancelled),
        within a second of it finishing.

        Raises:
            KeyError: unknown id (at once).
            TimeoutError: not finished after `timeout` seconds (the job is not affected).
        """
        ...

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued, scheduled, failed or running job; True if this call did it."""
        ...

    async def stats(self) -> dict[str, QueueStats]:
        """Per-queue counts of jobs in each state."""
        ...

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[JobRecord]:
        """Dead jobs, oldest death first; `limit` is 1..1000."""
        ...

    async def retry_dead(self, job_id: str) -> bool:
        """Queue a dead job again with attempts reset to 0; True if it was dead."""
        ...

    async def purge_dead(self, queue: str | None = None) -> int:
        """Delete dead jobs; return how many."""
        ...

    async def close(self) -> None:
        """Release connections. Idempotent."""
        ...

    # consumer side (driven by Worker.consume) ------------------------------------
    async def claim(
        self, queues: Sequence[str], limit: int, *, lease: float, max_retries: int
    ) -> list[Delivery]:
        """Lease up to `limit` ready jobs of `queues` for `lease` seconds, oldest first.

        Each claimed job's attempts count up by one and it gets a new fencing token.
        Scheduled and failed jobs whose time came are ready. Jobs whose lease expired
        are taken back first: queued again, or dead (status TIMEOUT, error naming the
        expired lease) once their attempts exceed their max_retries (the job's own,
        else `max_retries`).
        """
        ...

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return when work may be ready in `queues` (new, due or expired), or after
        `timeout` seconds, whichever is first. Never busy-polls."""
        ...

    async def renew(
        self,
        deliveries: Sequence[Delivery],
        *,
        lease: float,
        progress: Mapping[str, Progress] | None = None,
    ) -> dict[str, str]:
        """Extend the leases still held, storing `progress` (by job id) with them; return
        ``{id: reason}`` for the others, where reason is ``"cancelled"`` (broker.cancel
        was called: stop the run) or ``"lost"`` (the lease expired and the job was taken
        back: the run's result will be dropped)."""
        ...

    async def settle(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Apply outcomes in one round trip where possible, each fenced by its token.

        Returns, per outcome, whether it was applied (False: the lease was lost or the
        job was cancelled; nothing changed)."""
        ...
