"""BrokerFront: the public methods every broker shares, over a backend's storage primitives.

A backend subclasses :class:`BrokerFront` and implements only how jobs are stored,
claimed and settled (the abstract ``_store``, ``_claim``, ``_settle``… below). The
front owns everything else, once for every backend:

- argument checks, with the same exception and message whatever the backend;
- :class:`~pywork.BrokerClosed` for any call after :meth:`BrokerFront.close`;
- encoding jobs on the way in (trace context injected) and decoding them on the way out;
- building :class:`JobRecord`, :class:`Delivery` and :class:`ScheduleRecord` values;
- turning the driver's errors into the :class:`~pywork.BrokerError` tree, through the
  backend's one :meth:`BrokerFront._map_error`.

So a bug fixed here is fixed for every backend, and the memory broker (the reference
implementation) and a durable one cannot drift apart in what they accept or return.
"""

from __future__ import annotations

import abc
import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pywork import cron as cronlib
from pywork._durations import duration, optional_duration, positive_int
from pywork.brokers.base import (
    Claimed,
    Delivery,
    JobRecord,
    JobState,
    NewJob,
    Outcome,
    QueueStats,
    ScheduleRecord,
    StoredJob,
    StoredSchedule,
)
from pywork.cron import ScheduleSpec, check_schedule_name, declare, to_micros
from pywork.encoding import (
    DecodeError,
    decode_args,
    decode_job,
    decode_value,
    encode_for_enqueue,
    encode_job,
    encode_value,
)
from pywork.errors import BrokerClosed, BrokerError, PyworkError
from pywork.job import Job, Progress
from pywork.status import Status

__all__ = [
    "MAX_ERROR_LENGTH",
    "MAX_LIMIT",
    "BrokerFront",
    "check_queues",
    "duplicate_id",
    "encode_progress",
    "mask_url",
    "queue_stats",
]

T = TypeVar("T")

#: The largest page a listing call (``dead_letters``) returns.
MAX_LIMIT = 1000
#: Stored error texts are cut to this many characters (a handler may raise a huge message).
MAX_ERROR_LENGTH = 4000

_TIMED = frozenset((JobState.SCHEDULED, JobState.FAILED))
_FINAL = frozenset((JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED))
_SETTLE_STATES = frozenset((JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD, JobState.QUEUED))
_STATES = {state.value: state for state in JobState}
_STATUSES: dict[object, Status] = {int(status): status for status in Status}


_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|passwd|pass|pwd)=)[^&#]*")


def mask_url(url: str) -> str:
    """Return `url` with its password, in ``user:password@`` or a ``password=`` query
    parameter, replaced by ``***`` (for logs, banners and errors)."""
    masked = _SECRET_QUERY.sub(r"\1***", url)
    parts = urlsplit(masked)
    if parts.password is None:
        return masked
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def duplicate_id(job_id: str) -> ValueError:
    """The error for a job id that is already stored (backends raise it from ``_store``)."""
    return ValueError(f"a job with id {job_id!r} is already stored")


def check_queues(queues: object) -> list[str]:
    """Return `queues` (a sequence of non-empty names) as a list without repeats.

    Raises:
        TypeError: a str or bytes (one name, not a sequence of names) or not a sequence.
        ValueError: empty, or a name that is not a non-empty str.
    """
    if isinstance(queues, str | bytes) or not isinstance(queues, Sequence):
        raise TypeError(
            f"queues must be a sequence of queue names such as ['default'], got {queues!r}"
        )
    names = list(dict.fromkeys(queues))
    if not names or not all(isinstance(q, str) and q for q in names):
        raise ValueError(f"queues must be one or more non-empty str names, got {queues!r}")
    return names


def queue_stats(rows: Iterable[tuple[str, str, int]]) -> dict[str, QueueStats]:
    """:class:`QueueStats` per queue from ``(queue, state, count)`` rows (what a SQL
    ``GROUP BY`` gives); a state pywork does not know (a record written by something
    else) is left out rather than failing the call."""
    counts: dict[str, dict[str, int]] = {}
    for queue, state, n in rows:
        if state in _STATES:
            by_state = counts.setdefault(queue, {})
            by_state[state] = by_state.get(state, 0) + n
    return {queue: QueueStats(**by_state) for queue, by_state in counts.items()}


def _check_id(job_id: object) -> None:
    if not isinstance(job_id, str):
        raise TypeError(f"job_id must be a str, got {job_id!r}")


def _check_queue(queue: object) -> None:
    if queue is None:
        return
    if not isinstance(queue, str):
        raise TypeError(f"queue must be None (every queue) or a queue name, got {queue!r}")
    if not queue:
        raise ValueError("queue must be None (every queue) or a non-empty queue name, got ''")


def encode_progress(report: Progress) -> bytes:
    """A progress report as stored with a job's record."""
    return encode_value(report.to_json(), "progress")


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


class BrokerFront(abc.ABC):
    """The shared front of every broker (see the module docstring).

    Args:
        url: the url it was opened with (shown masked in ``repr`` and errors).
        retention: seconds the records of succeeded and cancelled jobs are kept (0 = not kept).

    Raises:
        TypeError, ValueError: a bad retention.
    """

    def __init__(self, url: str, *, retention: float | timedelta = 3600.0) -> None:
        self.url = url
        self.retention = duration(retention, "retention")
        self._closed = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {mask_url(self.url)}>"

    # the shared machinery ------------------------------------------------------------
    def _map_error(self, exc: Exception) -> BrokerError | None:
        """The BrokerError to raise for the driver error `exc`, or None to let it through.

        The one place where a backend turns its driver's errors into the BrokerError
        tree (BrokerUnavailable when the server cannot be reached).
        """
        return None

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosed(f"{self!r} is closed")

    async def _do(self, primitive: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Call a storage primitive on an open broker, mapping the driver's errors."""
        if self._closed:
            raise BrokerClosed(f"{self!r} is closed")
        try:
            return await primitive(*args)
        except PyworkError:
            raise
        except Exception as exc:
            if self._closed:
                raise BrokerClosed(f"{self!r} was closed during the call") from exc
            mapped = self._map_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    @staticmethod
    def _new_job(job: Job, payload: bytes, at: float | None, delay: float | None) -> NewJob:
        return NewJob(job.id, job.queue, job.handler, job.key, job.max_retries, payload, at, delay)

    @staticmethod
    def _record(stored: StoredJob, now: float) -> JobRecord:
        state: JobState | str | None = _STATES.get(stored.state)
        error = stored.error
        if state is None:  # a record written by something else: shown, never fatal
            state = str(stored.state)
            error = f"{error or ''} [bad stored record: unknown state {stored.state!r}]".lstrip()
        run_at = stored.run_at
        if state in _TIMED:
            if run_at is not None and run_at <= now:
                state, run_at = JobState.QUEUED, None  # due: ready for the next claim
        else:
            run_at = None
        status = None if stored.status is None else _STATUSES.get(stored.status)
        if status is None and stored.status is not None:
            error = f"{error or ''} [bad stored record: unknown status {stored.status!r}]".lstrip()
        return JobRecord(
            id=stored.id,
            handler=stored.handler,
            queue=stored.queue,
            args=decode_args(stored.payload),
            state=state,  # type: ignore[arg-type]  # a str only for a bad stored record
            status=status,
            attempts=stored.attempts,
            error=error,
            enqueued_at=datetime.fromtimestamp(stored.enqueued_at, UTC),
            started_at=_time(stored.started_at),
            finished_at=_time(stored.finished_at),
            key=stored.key,
            run_at=_time(run_at),
            result=decode_value(stored.result),
            progress=None
            if stored.progress is None
            else Progress.from_json(decode_value(stored.progress)),
        )

    @staticmethod
    def _schedule_record(stored: StoredSchedule) -> ScheduleRecord:
        return ScheduleRecord(
            name=stored.name,
            job=decode_job(stored.payload),
            every=stored.every,
            cron=stored.cron,
            timezone=stored.timezone,
            next_run_at=cronlib.from_micros(stored.next_run_at),
            last_run_at=(
                None if stored.last_run_at is None else cronlib.from_micros(stored.last_run_at)
            ),
            jitter=stored.jitter,
            misfire=stored.misfire,
        )

    # lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect to the storage (and create its tables or scripts); idempotent.

        Raises:
            BrokerUnavailable: the server or file cannot be reached.
        """
        await self._do(self._open)

    @classmethod
    async def from_url(cls, url: str, *, retention: float = 3600.0) -> BrokerFront:
        """Open the broker at `url` (what :func:`pywork.connect` calls); each backend's."""
        raise NotImplementedError(f"{cls.__name__} cannot be opened from an url")

    async def twin(self) -> BrokerFront:
        """A new broker on the same storage, for another thread's event loop.

        The consumer renews its leases from a thread of its own, with its own event
        loop and this broker's twin, so that a blocked event loop does not lose them.
        The default opens ``type(self).from_url(self.url, retention=self.retention)``
        (a connection of its own); a backend bound to no event loop may return itself
        (:class:`~pywork.brokers.memory.MemoryBroker` does). Close the twin when done,
        unless it is this broker.

        Raises:
            BrokerUnavailable: the storage cannot be reached.
        """
        return await type(self).from_url(self.url, retention=self.retention)

    async def close(self) -> None:
        """Release connections and threads. Idempotent; every later call raises
        :class:`~pywork.BrokerClosed`."""
        if self._closed:
            return
        self._closed = True
        await self._close()

    # producer side (contract §7) -----------------------------------------------------
    async def enqueue(
        self,
        job: Job,
        *,
        at: datetime | None = None,
        delay: float | timedelta | None = None,
        connection: Any = None,
    ) -> str:
        """Store `job` (durable once this returns) and return its id.

        If `job.key` is set and a queued, scheduled, running or failed job holds that key,
        nothing is stored and that job's id is returned.

        Args:
            job: the job; its args and headers must be plain JSON.
            at: run it at this time (naive = local time, as ``perform_at``; a past time
                means at once). Exclusive with `delay`.
            delay: run it after this many seconds (or a timedelta).
            connection: PostgreSQL only: the caller's asyncpg connection; the job is
                stored through it, inside its transaction (it exists if and only if
                that commits, and consumers are woken after the commit).

        Raises:
            TypeError: `job` is not a Job, `at` not a datetime, `delay` not a duration,
                or `connection` given to a broker that is not PostgreSQL.
            ValueError: both `at` and `delay`, a negative delay, or a duplicate job id.
            SerializationError: args or headers cannot be encoded (nothing is stored).
            BrokerClosed, BrokerUnavailable: the broker is closed or cannot be reached.
        """
        when: float | None = None
        seconds: float | None = None
        if at is not None:
            if delay is not None:
                raise ValueError("pass either at= or delay=, not both")
            if not isinstance(at, datetime):
                raise TypeError(f"at must be a datetime.datetime or None, got {at!r}")
            when = at.timestamp()  # naive: local time
            if when <= time.time():
                when = None
        elif delay is not None:
            seconds = duration(delay, "delay") or None
        payload = encode_for_enqueue(job)
        new = NewJob(
            job.id, job.queue, job.handler, job.key, job.max_retries, payload, when, seconds
        )
        if connection is not None:
            return (await self._do(self._store_on, connection, [new]))[0]
        return (await self._do(self._store, [new]))[0]

    async def enqueue_many(self, jobs: Sequence[Job], *, connection: Any = None) -> list[str]:
        """Store `jobs`, all or nothing, in one round trip where the backend allows.

        Every job is encoded before any is stored. `connection`: as for :meth:`enqueue`.

        Returns:
            Per job, its id (or the id of the live job already holding its key).

        Raises:
            TypeError: `jobs` is not a sequence of Jobs.
            ValueError: the same id twice, or an id already stored (nothing is stored).
            SerializationError: a job cannot be encoded (nothing is stored).
        """
        if isinstance(jobs, Job | str | bytes) or not isinstance(jobs, Sequence):
            raise TypeError(f"jobs must be a sequence of pywork.Job, got {jobs!r}")
        news = [self._new_job(job, encode_for_enqueue(job), None, None) for job in jobs]
        if len({new.id for new in news}) != len(news):
            raise ValueError("enqueue_many got the same job id twice")
        if not news:
            self._check_open()
            return []
        if connection is not None:
            return await self._do(self._store_on, connection, news)
        return await self._do(self._store, news)

    async def get(self, job_id: str) -> JobRecord | None:
        """The record of `job_id`, or None (unknown, or no longer kept)."""
        _check_id(job_id)
        stored = await self._do(self._get, job_id)
        return None if stored is None else self._record(stored, time.time())

    async def wait(self, job_id: str, *, timeout: float | timedelta | None = None) -> JobRecord:
        """The record of `job_id` once it is finished (succeeded, dead or cancelled),
        within a second of it finishing (backends with notifications wake at once).

        Raises:
            KeyError: `job_id` is unknown (at once), or its record is gone (a finished job
                whose record was not kept: ``retention=0``).
            TimeoutError: not finished after `timeout` seconds; the job is not affected.
        """
        _check_id(job_id)
        seconds = optional_duration(timeout, "timeout")
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            record = await self.get(job_id)
            if record is None:
                raise KeyError(f"no job {job_id!r} in {self!r}")
            if record.state in _FINAL:
                return record
            slice_ = 1.0
            if deadline is not None:
                slice_ = min(slice_, deadline - time.monotonic())
                if slice_ <= 0:
                    raise TimeoutError(
                        f"job {job_id!r} is still {record.state.value} after {seconds:g}s"
                    )
            await self._do(self._wait_for_finish, job_id, slice_)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued, scheduled, failed or running job; True if this call did it.

        A running job's consumer learns of it on its next lease renewal and cancels the run.
        """
        _check_id(job_id)
        return await self._do(self._cancel, job_id)

    async def stats(self) -> dict[str, QueueStats]:
        """Per-queue counts of jobs in each state, by queue name (due scheduled and
        failed jobs count as queued)."""
        counts = await self._do(self._stats)
        return dict(sorted(counts.items()))

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[JobRecord]:
        """Dead jobs (of `queue`, or of every queue), oldest death first.

        Raises:
            TypeError: `queue` is not None or a str; `limit` is not an int.
            ValueError: `queue` is empty; `limit` is outside 1..1000.
        """
        _check_queue(queue)
        limit = positive_int(limit, "limit")
        if limit > MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}, got {limit!r}")
        rows = await self._do(self._dead_letters, queue, limit)
        now = time.time()
        return [self._record(row, now) for row in rows]

    async def retry_dead(self, job_id: str) -> bool:
        """Queue a dead job again with attempts reset to 0; True if it was dead.

        If another live job took its key meanwhile, the retried job loses its key.
        """
        _check_id(job_id)
        return await self._do(self._retry_dead, job_id)

    async def purge_dead(self, queue: str | None = None) -> int:
        """Delete the dead jobs of `queue` (None: every queue); return how many."""
        _check_queue(queue)
        return await self._do(self._purge_dead, queue)

    # consumer side (driven by Worker.consume) ----------------------------------------
    async def claim(
        self, queues: Sequence[str], limit: int, *, lease: float, max_retries: int
    ) -> list[Delivery]:
        """Lease up to `limit` ready jobs of `queues` for `lease` seconds, oldest first.

        See :meth:`pywork.brokers.Broker.claim`. A job whose stored message cannot be
        decoded is delivered with ``job=None`` and the reason in ``error``.
        """
        names = check_queues(queues)
        limit = positive_int(limit, "limit", minimum=0)
        lease = duration(lease, "lease", allow_zero=False)
        max_retries = positive_int(max_retries, "max_retries", minimum=0)
        claimed: list[Claimed] = await self._do(self._claim, names, limit, lease, max_retries)
        deliveries = []
        for job_id, token, attempt, payload in claimed:
            try:
                deliveries.append(Delivery(job_id, token, attempt, decode_job(payload)))
            except DecodeError as exc:
                deliveries.append(Delivery(job_id, token, attempt, None, f"DecodeError: {exc}"))
        return deliveries

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return when work may be ready in `queues` (new, due or expired), or after
        `timeout` seconds, whichever is first. Never busy-polls."""
        names = check_queues(queues)
        seconds = duration(timeout, "timeout")
        await self._do(self._wait_for_work, names, seconds)

    async def renew(
        self,
        deliveries: Sequence[Delivery],
        *,
        lease: float,
        progress: Mapping[str, Progress] | None = None,
    ) -> dict[str, str]:
        """Extend the leases still held, storing the `progress` reports (by job id) of
        those jobs; ``{id: "cancelled" | "lost"}`` for the others.

        "cancelled": ``broker.cancel`` was called (stop the run); "lost": the lease
        expired and the job was taken back (the run's outcome will be dropped).
        """
        lease = duration(lease, "lease", allow_zero=False)
        if not deliveries:
            self._check_open()
            return {}
        encoded = (
            {job_id: encode_progress(report) for job_id, report in progress.items()}
            if progress
            else {}
        )
        return await self._do(self._renew, deliveries, lease, encoded)

    async def settle(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Apply outcomes, each fenced by its lease token; per outcome, whether it was
        applied (False: the lease was lost or the job cancelled; nothing changed).

        Raises:
            ValueError: an outcome's state is not succeeded, failed, dead or queued, or
                its retry_in is negative.
        """
        for outcome in outcomes:
            if outcome.state not in _SETTLE_STATES:
                raise ValueError(
                    "an outcome's state must be succeeded, failed, dead or queued, "
                    f"got {outcome.state!r}"
                )
            if outcome.retry_in is not None:  # seconds for the backend (a timedelta too)
                outcome.retry_in = duration(outcome.retry_in, "retry_in")
            error = outcome.error
            if error is not None and len(error) > MAX_ERROR_LENGTH:
                cut = len(error) - MAX_ERROR_LENGTH
                outcome.error = f"{error[:MAX_ERROR_LENGTH]}… ({cut} more characters cut)"
        if not outcomes:
            self._check_open()
            return []
        return await self._do(self._settle, outcomes)

    # cluster schedules (contract §9) -------------------------------------------------
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
        """Declare (or redeclare) the schedule `name`; see
        :meth:`pywork.brokers.ScheduleStore.schedule`."""
        spec, payload = declare(
            name, job, every=every, cron=cron, timezone=timezone, jitter=jitter, misfire=misfire
        )
        first_run = to_micros(spec.first_run(cronlib.now()))
        stored = await self._do(self._declare_schedule, name, payload, spec, first_run)
        return self._schedule_record(stored)

    async def unschedule(self, name: str) -> bool:
        """Delete the schedule `name`; True if it existed."""
        check_schedule_name(name)
        return await self._do(self._unschedule, name)

    async def schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by name."""
        rows = await self._do(self._schedules)
        return sorted((self._schedule_record(row) for row in rows), key=lambda r: r.name)

    async def due_schedules(self, at: datetime) -> tuple[list[ScheduleRecord], datetime | None]:
        """The schedules whose next run is at or before `at` (by next run, then name), and
        the earliest next run of the others (None when there are none).

        Raises:
            TypeError: `at` is not a datetime.
            ValueError: `at` is naive.
        """
        if not isinstance(at, datetime):
            raise TypeError(f"at must be an aware datetime.datetime, got {at!r}")
        if at.utcoffset() is None:
            raise ValueError(f"at must be an aware datetime (with a tzinfo), got {at!r}")
        rows, later = await self._do(self._due_schedules, to_micros(at))
        records = [self._schedule_record(row) for row in rows]
        return records, None if later is None else cronlib.from_micros(later)

    async def fire(
        self,
        name: str,
        expected: datetime,
        next_run_at: datetime,
        last_run_at: datetime,
        jobs: Sequence[tuple[Job, float | None]],
    ) -> bool:
        """If `name` still runs next at `expected`, move it on and enqueue `jobs` (each with
        its delay in seconds or None), atomically: the compare-and-set that makes each tick
        fire once across consumers.

        Returns:
            True if this call won (and enqueued the jobs); False (nothing changed) if
            another consumer fired it first or it was removed.
        """
        check_schedule_name(name)
        news = []
        for pair in jobs:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], Job)):
                raise TypeError(f"fire takes (Job, delay) pairs, got {pair!r}")
            job, delay = pair
            news.append(self._new_job(job, encode_job(job), None, delay or None))
        return await self._do(
            self._fire,
            name,
            to_micros(expected),
            to_micros(next_run_at),
            to_micros(last_run_at),
            news,
        )

    # storage primitives: what each backend implements ---------------------------------
    async def _open(self) -> None:  # noqa: B027 (a hook: most backends need nothing)
        """Connect and prepare the storage (idempotent)."""

    async def _close(self) -> None:  # noqa: B027
        """Release the storage's connections and threads (called once)."""

    @abc.abstractmethod
    async def _store(self, jobs: list[NewJob]) -> list[str]:
        """Store `jobs` atomically; per job its id, or the id of the live job (queued,
        scheduled, running or failed) holding its key, in which case it is not stored.
        A job id already stored raises :func:`duplicate_id` and stores nothing. Wakes
        consumers of the queues of jobs ready now."""

    async def _store_on(self, connection: Any, jobs: list[NewJob]) -> list[str]:
        """:meth:`_store` through the caller's `connection`, inside its transaction
        (transactional enqueue). Only PostgreSQL has it."""
        raise TypeError(
            f"{type(self).__name__} takes no connection=: transactional enqueue stores jobs "
            "through an asyncpg connection of a postgresql:// broker"
        )

    @abc.abstractmethod
    async def _get(self, job_id: str) -> StoredJob | None:
        """The stored job `job_id`, or None."""

    @abc.abstractmethod
    async def _cancel(self, job_id: str) -> bool:
        """Move a live job to cancelled (kept `retention` seconds, and for a running job
        at least until its lease ends); True if this call did it."""

    @abc.abstractmethod
    async def _stats(self) -> dict[str, QueueStats]:
        """Per queue that has jobs, the counts by state (due scheduled/failed as queued)."""

    @abc.abstractmethod
    async def _dead_letters(self, queue: str | None, limit: int) -> list[StoredJob]:
        """At most `limit` dead jobs of `queue` (None: all), oldest death first."""

    @abc.abstractmethod
    async def _retry_dead(self, job_id: str) -> bool:
        """Queue the dead job again (attempts, status, error and times reset; its key
        dropped when another live job holds it now); True if it was dead."""

    @abc.abstractmethod
    async def _purge_dead(self, queue: str | None) -> int:
        """Delete the dead jobs of `queue` (None: all); how many."""

    @abc.abstractmethod
    async def _claim(
        self, queues: list[str], limit: int, lease: float, max_retries: int
    ) -> list[Claimed]:
        """Lease up to `limit` ready jobs (see :meth:`pywork.brokers.Broker.claim`): take
        back expired leases (queued again, or dead with ``LEASE_EXPIRED`` once attempts
        exceed the job's max_retries, else `max_retries`), make due jobs ready, then lease
        the oldest ready ones with attempts + 1 and one new fencing token."""

    @abc.abstractmethod
    async def _wait_for_work(self, queues: list[str], timeout: float) -> None:
        """Sleep until work may be ready in `queues` or `timeout` passes (no busy poll)."""

    @abc.abstractmethod
    async def _renew(
        self, deliveries: Sequence[Delivery], lease: float, progress: Mapping[str, bytes]
    ) -> dict[str, str]:
        """Extend the leases still held by these tokens, storing the encoded `progress`
        of those jobs (only where the lease is held); reasons for the others."""

    async def _wait_for_finish(self, job_id: str, timeout: float) -> None:
        """Sleep until `job_id` may have finished, or `timeout` seconds. Backends with
        notifications wake at once; this default looks again four times a second."""
        await asyncio.sleep(min(timeout, 0.25))

    @abc.abstractmethod
    async def _settle(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Apply the (validated) outcomes fenced by their tokens, storing each one's
        `result` (succeeded) and `progress` when given; per outcome, applied? Wakes
        :meth:`_wait_for_finish` of jobs that finished."""

    @abc.abstractmethod
    async def _declare_schedule(
        self, name: str, payload: bytes, spec: ScheduleSpec, first_run: int
    ) -> StoredSchedule:
        """Insert or replace the schedule `name`. A redeclaration whose timing is the
        same (``spec.same_timing``) keeps its next run time; otherwise next_run_at is
        `first_run` (µs). last_run_at is kept either way."""

    @abc.abstractmethod
    async def _unschedule(self, name: str) -> bool:
        """Delete the schedule `name`; True if it existed."""

    @abc.abstractmethod
    async def _schedules(self) -> list[StoredSchedule]:
        """Every stored schedule (any order)."""

    @abc.abstractmethod
    async def _due_schedules(self, at: int) -> tuple[list[StoredSchedule], int | None]:
        """The schedules with next_run_at <= `at` (µs), by next run then name, and the
        earliest next_run_at of the others."""

    @abc.abstractmethod
    async def _fire(
        self, name: str, expected: int, next_run_at: int, last_run_at: int, jobs: list[NewJob]
    ) -> bool:
        """Atomically: if `name`'s next_run_at is `expected`, set next/last run and store
        `jobs` as :meth:`_store` does (held keys honoured). True if this call won."""
