"""MemoryBroker: the in-process reference broker, for tests and single-process use.

``memory://`` gives a private store per :func:`pywork.connect` call; ``memory://NAME``
shares one store per process by name (so a producer and a consumer in the same process,
even on different threads and event loops, see the same jobs). Nothing survives the
process. Jobs are encoded exactly as on durable brokers, so a test on this broker
catches arguments a real queue would refuse.

Per queue the store keeps a heap of ready jobs (oldest first) and a heap of timed
events (a scheduled or failed job becoming due, a lease expiring); entries carry a
generation number, so superseded heap items are skipped lazily. :meth:`MemoryBroker.join`
waits until the work is done, like Dramatiq's ``StubBroker.join``.

Cluster schedules are a dict by name in the store; ``fire`` compares and moves a
schedule's next run time and enqueues its jobs under the store's lock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from pywork import cron as cronlib
from pywork._durations import duration, optional_duration, positive_int
from pywork.brokers.base import (
    Delivery,
    JobRecord,
    JobState,
    Outcome,
    QueueStats,
    ScheduleRecord,
)
from pywork.cron import ScheduleSpec, check_schedule_name, declare, from_micros, to_micros
from pywork.encoding import DecodeError, decode_job, encode_for_enqueue, encode_job
from pywork.job import Job
from pywork.status import Status

__all__ = ["MemoryBroker"]

_QUEUED = JobState.QUEUED
_SCHEDULED = JobState.SCHEDULED
_RUNNING = JobState.RUNNING
_FAILED = JobState.FAILED
_SUCCEEDED = JobState.SUCCEEDED
_DEAD = JobState.DEAD
_CANCELLED = JobState.CANCELLED
_ACTIVE = frozenset((_QUEUED, _SCHEDULED, _RUNNING, _FAILED))
_TIMED = frozenset((_SCHEDULED, _FAILED))
_CLEANUP_EVERY = 1.0


class _Schedule:
    """One stored cluster schedule (times as integer microseconds since the epoch)."""

    __slots__ = ("last", "name", "next", "payload", "spec")

    def __init__(
        self, name: str, payload: bytes, spec: ScheduleSpec, next_run: int, last: int | None
    ) -> None:
        self.name = name
        self.payload = payload
        self.spec = spec
        self.next = next_run
        self.last = last

    def record(self) -> ScheduleRecord:
        spec = self.spec
        return ScheduleRecord(
            name=self.name,
            job=decode_job(self.payload),
            every=spec.every,
            cron=spec.cron,
            timezone=spec.timezone,
            next_run_at=from_micros(self.next),
            last_run_at=None if self.last is None else from_micros(self.last),
            jitter=spec.jitter,
            misfire=spec.misfire,
        )


class _Entry:
    """One stored job."""

    __slots__ = (
        "attempts",
        "enqueued_at",
        "error",
        "finished_at",
        "gen",
        "handler",
        "id",
        "key",
        "max_retries",
        "payload",
        "queue",
        "run_at",
        "seq",
        "started_at",
        "state",
        "status",
        "token",
    )

    def __init__(
        self,
        job_id: str,
        queue: str,
        handler: str,
        payload: bytes,
        key: str | None,
        max_retries: int | None,
        seq: int,
        now: float,
    ) -> None:
        self.id = job_id
        self.queue = queue
        self.handler = handler
        self.payload = payload
        self.key = key
        self.max_retries = max_retries
        self.seq = seq
        self.gen = 0
        self.state = _QUEUED
        self.status: Status | None = None
        self.attempts = 0
        self.error: str | None = None
        self.enqueued_at = now
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.run_at: float | None = None  # due time, lease expiry, or purge time
        self.token: str | None = None


class _Waiter:
    __slots__ = ("future", "loop", "queues")

    def __init__(self, queues: frozenset[str] | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[None] = self.loop.create_future()
        self.queues = queues

    def wake(self) -> None:
        def done() -> None:
            if not self.future.done():
                self.future.set_result(None)

        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(done)


class _Store:
    """The jobs of one ``memory://`` store; every method runs under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, _Entry] = {}
        self.keys: dict[str, str] = {}  # key -> id of the active job holding it
        self.ready: defaultdict[str, list[tuple[int, int, str]]] = defaultdict(list)
        self.timed: defaultdict[str, list[tuple[float, int, str]]] = defaultdict(list)
        self.purge: list[tuple[float, int, str]] = []
        self.counts: defaultdict[str, dict[JobState, int]] = defaultdict(
            lambda: dict.fromkeys(JobState, 0)
        )
        self.seq = itertools.count()
        self.work_waiters: list[_Waiter] = []
        self.change_waiters: list[_Waiter] = []
        self.last_cleanup = 0.0
        self.schedules: dict[str, _Schedule] = {}

    # transitions -------------------------------------------------------------
    def set_state(self, entry: _Entry, state: JobState) -> None:
        counts = self.counts[entry.queue]
        counts[entry.state] -= 1
        counts[state] += 1
        key = entry.key
        if (
            key is not None
            and entry.state in _ACTIVE
            and state not in _ACTIVE
            and self.keys.get(key) == entry.id
        ):
            del self.keys[key]
        entry.state = state
        entry.gen += 1

    def push_ready(self, entry: _Entry) -> None:
        heapq.heappush(self.ready[entry.queue], (entry.seq, entry.gen, entry.id))

    def push_timed(self, entry: _Entry, when: float) -> None:
        entry.run_at = when
        heapq.heappush(self.timed[entry.queue], (when, entry.gen, entry.id))

    def finish(self, entry: _Entry, state: JobState, now: float, retention: float) -> None:
        """Move to succeeded or cancelled; delete or schedule the purge of the record."""
        keep_until = now + retention
        if entry.state is _RUNNING and state is _CANCELLED and entry.run_at is not None:
            keep_until = max(keep_until, entry.run_at)  # its consumer learns on renew
        self.set_state(entry, state)
        entry.finished_at = now
        if keep_until <= now:
            self.delete(entry)
        else:
            entry.run_at = keep_until
            heapq.heappush(self.purge, (keep_until, entry.gen, entry.id))

    def delete(self, entry: _Entry) -> None:
        self.counts[entry.queue][entry.state] -= 1
        if entry.key is not None and self.keys.get(entry.key) == entry.id:
            del self.keys[entry.key]
        entry.gen += 1
        del self.jobs[entry.id]

    def valid(self, gen: int, job_id: str) -> _Entry | None:
        entry = self.jobs.get(job_id)
        return entry if entry is not None and entry.gen == gen else None

    def promote(self, queue: str, now: float, max_retries: int | None) -> None:
        """Make due scheduled/failed jobs ready; take back expired leases (if max_retries)."""
        heap = self.timed.get(queue)
        while heap and heap[0][0] <= now:
            _, gen, job_id = heap[0]
            entry = self.valid(gen, job_id)
            if entry is None:
                heapq.heappop(heap)
            elif entry.state in _TIMED:
                heapq.heappop(heap)
                self.set_state(entry, _QUEUED)
                entry.run_at = None
                self.push_ready(entry)
            elif entry.state is _RUNNING:
                if max_retries is None:
                    return  # only a claimer knows the max_retries to apply
                heapq.heappop(heap)
                self.expire(entry, now, max_retries)
            else:
                heapq.heappop(heap)

    def expire(self, entry: _Entry, now: float, max_retries: int) -> None:
        limit = entry.max_retries if entry.max_retries is not None else max_retries
        entry.token = None
        entry.run_at = None
        if entry.attempts > limit:
            self.set_state(entry, _DEAD)
            entry.status = Status.TIMEOUT
            entry.error = (
                f"JobTimeout: lease expired {entry.attempts} times (its consumer stopped "
                "renewing it: crashed, killed or stalled)"
            )
            entry.finished_at = now
        else:
            self.set_state(entry, _QUEUED)
            self.push_ready(entry)

    def next_due(self, queues: Sequence[str]) -> float | None:
        """The earliest time a job of `queues` becomes ready (or a lease expires)."""
        due: float | None = None
        for queue in queues:
            heap = self.timed.get(queue)
            while heap and self.valid(heap[0][1], heap[0][2]) is None:
                heapq.heappop(heap)
            if heap and (due is None or heap[0][0] < due):
                due = heap[0][0]
        return due

    def has_ready(self, queues: Sequence[str]) -> bool:
        return any(self.counts[q][_QUEUED] for q in queues if q in self.counts)

    def cleanup(self, now: float) -> None:
        self.last_cleanup = now
        heap = self.purge
        while heap and heap[0][0] <= now:
            _, gen, job_id = heapq.heappop(heap)
            entry = self.valid(gen, job_id)
            if entry is not None and entry.state in (_SUCCEEDED, _CANCELLED):
                self.delete(entry)

    # notification --------------------------------------------------------------
    def notify(self, queues: Sequence[str] | None) -> None:
        """Wake consumers waiting for work in `queues` (None: all) and every join()."""
        if self.work_waiters:
            keep = []
            for waiter in self.work_waiters:
                if queues is None or waiter.queues is None or not waiter.queues.isdisjoint(queues):
                    waiter.wake()
                else:
                    keep.append(waiter)
            self.work_waiters = keep
        if self.change_waiters:
            waiters, self.change_waiters = self.change_waiters, []
            for waiter in waiters:
                waiter.wake()


_NAMED: weakref.WeakValueDictionary[str, _Store] = weakref.WeakValueDictionary()
_NAMED_LOCK = threading.Lock()


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _start_time(at: datetime | None, delay: float | timedelta | None, now: float) -> float | None:
    """When a job enqueued with `at`/`delay` becomes ready, or None for at once."""
    if at is not None and delay is not None:
        raise ValueError("pass either at= or delay=, not both")
    if at is not None:
        if not isinstance(at, datetime):
            raise TypeError(f"at must be a datetime.datetime, got {at!r}")
        when = at.timestamp()  # naive: local time, as perform_at
        return when if when > now else None
    seconds = optional_duration(delay, "delay")
    if seconds:
        return now + seconds
    return None


class MemoryBroker:
    """An in-process broker (the reference implementation of :class:`~pywork.Broker`).

    Args:
        name: share one store per process under this name (``memory://NAME``);
            None for a private store.
        retention: seconds the records of succeeded and cancelled jobs are kept
            (0 = deleted at once).

    Raises:
        ValueError, TypeError: invalid name or retention.
    """

    def __init__(self, name: str | None = None, *, retention: float | timedelta = 3600.0) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be None or a non-empty str, got {name!r}")
        self.retention = duration(retention, "retention")
        self.name = name
        self.url = f"memory://{name or ''}"
        if name is None:
            self._store = _Store()
        else:
            with _NAMED_LOCK:
                store = _NAMED.get(name)
                if store is None:
                    store = _NAMED[name] = _Store()
            self._store = store
        self._closed = False

    @classmethod
    async def from_url(cls, url: str, *, retention: float = 3600.0) -> MemoryBroker:
        """Open ``memory://`` (a private store) or ``memory://NAME`` (shared by name)."""
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise ValueError(f"MemoryBroker needs a memory:// url, got {url!r}")
        name = (parts.netloc + parts.path).strip("/") or None
        return cls(name, retention=retention)

    def __repr__(self) -> str:
        return f"<MemoryBroker {self.url!r}>"

    # producer side --------------------------------------------------------------

    def _add(self, job: Job, payload: bytes, start: float | None, now: float) -> str:
        store = self._store
        if job.key is not None:
            holder = store.keys.get(job.key)
            if holder is not None:
                return holder
        if job.id in store.jobs:
            raise ValueError(f"a job with id {job.id!r} is already stored")
        entry = _Entry(
            job.id, job.queue, job.handler, payload, job.key, job.max_retries, next(store.seq), now
        )
        store.jobs[job.id] = entry
        store.counts[job.queue][_QUEUED] += 1
        if job.key is not None:
            store.keys[job.key] = job.id
        if start is None:
            store.push_ready(entry)
        else:
            store.set_state(entry, _SCHEDULED)
            store.push_timed(entry, start)
        return job.id

    async def enqueue(
        self,
        job: Job,
        *,
        at: datetime | None = None,
        delay: float | timedelta | None = None,
    ) -> str:
        """Store `job` and return its id (or the id of the active job holding its key).

        Args:
            job: the job; its args and headers must be plain JSON.
            at: run at this time (naive = local time; a past time runs at once).
            delay: run after this many seconds. Exclusive with `at`.

        Raises:
            SerializationError: args or headers cannot be encoded (nothing is stored).
            ValueError: both `at` and `delay`, a negative delay, or a duplicate job id.
        """
        now = time.time()
        start = _start_time(at, delay, now)
        payload = encode_for_enqueue(job)
        store = self._store
        with store.lock:
            job_id = self._add(job, payload, start, now)
            store.notify((job.queue,))
        return job_id

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """Store `jobs` all or nothing (every job is encoded before any is stored).

        Raises:
            SerializationError: a job cannot be encoded (nothing is stored).
        """
        if isinstance(jobs, Job) or not isinstance(jobs, Sequence):
            raise TypeError(f"jobs must be a sequence of pywork.Job, got {jobs!r}")
        payloads = [encode_for_enqueue(job) for job in jobs]
        ids = [job.id for job in jobs]
        if len(set(ids)) != len(ids):
            raise ValueError("enqueue_many got the same job id twice")
        now = time.time()
        store = self._store
        with store.lock:
            for job in jobs:
                if job.id in store.jobs:
                    raise ValueError(f"a job with id {job.id!r} is already stored")
            result = [
                self._add(job, payload, None, now)
                for job, payload in zip(jobs, payloads, strict=True)
            ]
            store.notify(list({job.queue for job in jobs}))
        return result

    def _record(self, entry: _Entry) -> JobRecord:
        try:
            args = decode_job(entry.payload).args
        except DecodeError:
            args = {}
        state = entry.state
        if state in _TIMED and entry.run_at is not None and entry.run_at <= time.time():
            state = _QUEUED  # due: ready for the next claim
        return JobRecord(
            id=entry.id,
            handler=entry.handler,
            queue=entry.queue,
            args=args,
            state=state,
            status=entry.status,
            attempts=entry.attempts,
            error=entry.error,
            enqueued_at=datetime.fromtimestamp(entry.enqueued_at, UTC),
            started_at=_ts(entry.started_at),
            finished_at=_ts(entry.finished_at),
            key=entry.key,
            run_at=_ts(entry.run_at) if state in _TIMED else None,
        )

    async def get(self, job_id: str) -> JobRecord | None:
        """The record of `job_id`, or None (unknown, or no longer kept)."""
        if not isinstance(job_id, str):
            raise TypeError(f"job_id must be a str, got {job_id!r}")
        store = self._store
        with store.lock:
            entry = store.jobs.get(job_id)
            return None if entry is None else self._record(entry)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued, scheduled, failed or running job; True if this call did it.

        A running job's consumer learns of it on its next lease renewal and cancels the run.
        """
        if not isinstance(job_id, str):
            raise TypeError(f"job_id must be a str, got {job_id!r}")
        store = self._store
        with store.lock:
            entry = store.jobs.get(job_id)
            if entry is None or entry.state not in _ACTIVE:
                return False
            store.finish(entry, _CANCELLED, time.time(), self.retention)
            store.notify(())
            return True

    async def stats(self) -> dict[str, QueueStats]:
        """Per-queue counts of jobs in each state (due scheduled/failed jobs count as queued)."""
        store = self._store
        now = time.time()
        with store.lock:
            result = {}
            for queue, counts in store.counts.items():
                if not any(counts.values()):
                    continue
                counts = dict(counts)
                for when, gen, job_id in store.timed.get(queue, ()):
                    entry = store.valid(gen, job_id)
                    if entry is not None and entry.state in _TIMED and when <= now:
                        counts[entry.state] -= 1
                        counts[_QUEUED] += 1
                result[queue] = QueueStats(**{state.value: n for state, n in counts.items()})
            return result

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[JobRecord]:
        """Dead jobs (of `queue`, or all), oldest death first, at most `limit`."""
        limit = positive_int(limit, "limit")
        store = self._store
        with store.lock:
            dead = [
                e
                for e in store.jobs.values()
                if e.state is _DEAD and (queue is None or e.queue == queue)
            ]
            dead.sort(key=lambda e: (e.finished_at or 0.0, e.seq))
            return [self._record(e) for e in dead[:limit]]

    async def retry_dead(self, job_id: str) -> bool:
        """Queue a dead job again with attempts 0; True if it was dead."""
        if not isinstance(job_id, str):
            raise TypeError(f"job_id must be a str, got {job_id!r}")
        store = self._store
        with store.lock:
            entry = store.jobs.get(job_id)
            if entry is None or entry.state is not _DEAD:
                return False
            if entry.key is not None:
                if entry.key in store.keys:  # another job holds the key now
                    entry.key = None
                else:
                    store.keys[entry.key] = entry.id
            store.set_state(entry, _QUEUED)
            entry.attempts = 0
            entry.status = entry.error = None
            entry.started_at = entry.finished_at = entry.run_at = None
            store.push_ready(entry)
            store.notify((entry.queue,))
            return True

    async def purge_dead(self, queue: str | None = None) -> int:
        """Delete dead jobs (of `queue`, or all); return how many."""
        store = self._store
        with store.lock:
            dead = [
                e
                for e in store.jobs.values()
                if e.state is _DEAD and (queue is None or e.queue == queue)
            ]
            for entry in dead:
                store.delete(entry)
            if dead:
                store.notify(())
            return len(dead)

    async def close(self) -> None:
        """Nothing to release; the store lives while a broker or its name refers to it."""
        self._closed = True

    # consumer side --------------------------------------------------------------
    async def claim(
        self, queues: Sequence[str], limit: int, *, lease: float, max_retries: int
    ) -> list[Delivery]:
        """Lease up to `limit` ready jobs of `queues`, oldest first (see :class:`Broker`)."""
        store = self._store
        now = time.time()
        token = os.urandom(8).hex()
        deliveries: list[Delivery] = []
        with store.lock:
            if now - store.last_cleanup >= _CLEANUP_EVERY:
                store.cleanup(now)
            for queue in queues:
                store.promote(queue, now, max_retries)
            heaps = [store.ready[q] for q in queues if store.ready.get(q)]
            claimed: list[_Entry] = []
            while len(claimed) < limit and heaps:
                best: list[tuple[int, int, str]] | None = None
                for heap in heaps:
                    while heap and store.valid(heap[0][1], heap[0][2]) is None:
                        heapq.heappop(heap)
                    if heap and (best is None or heap[0] < best[0]):
                        best = heap
                if best is None:
                    break
                job_id = heapq.heappop(best)[2]
                entry = store.jobs[job_id]
                if entry.state is not _QUEUED:
                    continue
                store.set_state(entry, _RUNNING)
                entry.attempts += 1
                entry.token = token
                entry.started_at = now
                store.push_timed(entry, now + lease)
                claimed.append(entry)
                heaps = [h for h in heaps if h]
            if claimed:
                store.notify(())
        for entry in claimed:
            try:
                job: Job | None = decode_job(entry.payload)
                error = None
            except DecodeError as exc:
                job, error = None, f"{type(exc).__name__}: {exc}"
            deliveries.append(Delivery(entry.id, token, entry.attempts, job, error))
        return deliveries

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a job of `queues` may be ready, or after `timeout` seconds."""
        store = self._store
        with store.lock:
            if store.has_ready(queues):
                return
            due = store.next_due(queues)
            waiter = _Waiter(frozenset(queues))
            store.work_waiters.append(waiter)
        delay = timeout if due is None else min(timeout, max(0.0, due - time.time()))
        try:
            await asyncio.wait([waiter.future], timeout=delay)
        finally:
            with store.lock:
                if waiter in store.work_waiters:
                    store.work_waiters.remove(waiter)

    async def renew(self, deliveries: Sequence[Delivery], *, lease: float) -> dict[str, str]:
        """Extend the leases still held; ``{id: "cancelled" | "lost"}`` for the others."""
        store = self._store
        now = time.time()
        lost: dict[str, str] = {}
        with store.lock:
            for delivery in deliveries:
                entry = store.jobs.get(delivery.id)
                if entry is not None and entry.token == delivery.token:
                    if entry.state is _RUNNING:
                        entry.gen += 1
                        store.push_timed(entry, now + lease)
                        continue
                    if entry.state is _CANCELLED:
                        lost[delivery.id] = "cancelled"
                        continue
                lost[delivery.id] = "lost"
        return lost

    async def settle(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Apply outcomes fenced by their tokens; per outcome, whether it was applied."""
        store = self._store
        now = time.time()
        applied: list[bool] = []
        queues: set[str] = set()
        with store.lock:
            for outcome in outcomes:
                delivery = outcome.delivery
                entry = store.jobs.get(delivery.id)
                if entry is None or entry.state is not _RUNNING or entry.token != delivery.token:
                    applied.append(False)
                    continue
                entry.token = None
                state = outcome.state
                if state is _SUCCEEDED:
                    entry.status, entry.error = outcome.status, None
                    store.finish(entry, _SUCCEEDED, now, self.retention)
                elif state is _FAILED:
                    entry.status, entry.error = outcome.status, outcome.error
                    store.set_state(entry, _FAILED)
                    store.push_timed(entry, now + (outcome.retry_in or 0.0))
                    queues.add(entry.queue)
                elif state is _DEAD:
                    entry.status, entry.error = outcome.status, outcome.error
                    entry.finished_at = now
                    entry.run_at = None
                    store.set_state(entry, _DEAD)
                elif state is _QUEUED:
                    entry.attempts = max(0, entry.attempts - 1)
                    entry.run_at = None
                    store.set_state(entry, _QUEUED)
                    store.push_ready(entry)
                    queues.add(entry.queue)
                else:
                    raise ValueError(f"cannot settle a job as {state!r}")
                applied.append(True)
            store.notify(list(queues))
        return applied

    # cluster schedules (contract §9) -------------------------------------------
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
        """Declare (or redeclare) the schedule `name`; see :meth:`ScheduleStore.schedule`."""
        spec, payload = declare(
            name, job, every=every, cron=cron, timezone=timezone, jitter=jitter, misfire=misfire
        )
        store = self._store
        with store.lock:
            old = store.schedules.get(name)
            if old is not None and spec.same_timing(old.spec):
                next_run = old.next
            else:
                next_run = to_micros(spec.first_run(cronlib.now()))
            entry = _Schedule(name, payload, spec, next_run, None if old is None else old.last)
            store.schedules[name] = entry
            return entry.record()

    async def unschedule(self, name: str) -> bool:
        """Delete the schedule `name`; True if it existed."""
        check_schedule_name(name)
        store = self._store
        with store.lock:
            return store.schedules.pop(name, None) is not None

    async def schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by name."""
        store = self._store
        with store.lock:
            entries = sorted(store.schedules.values(), key=lambda e: e.name)
            return [entry.record() for entry in entries]

    async def due_schedules(self, at: datetime) -> tuple[list[ScheduleRecord], datetime | None]:
        """The schedules due at `at`, and the earliest next run time of the others."""
        limit = to_micros(at)
        store = self._store
        with store.lock:
            due = [e for e in store.schedules.values() if e.next <= limit]
            later = [e.next for e in store.schedules.values() if e.next > limit]
            due.sort(key=lambda e: (e.next, e.name))
            return [e.record() for e in due], from_micros(min(later)) if later else None

    async def fire(
        self,
        name: str,
        expected: datetime,
        next_run_at: datetime,
        last_run_at: datetime,
        jobs: Sequence[tuple[Job, float | None]],
    ) -> bool:
        """If `name` still runs next at `expected`, move it on and enqueue `jobs`, atomically.

        Returns:
            True if this call won the compare-and-set (and enqueued the jobs); False
            (nothing changed) if another consumer fired it first or it was removed.
        """
        payloads = [encode_job(job) for job, _ in jobs]
        store = self._store
        now = time.time()
        with store.lock:
            entry = store.schedules.get(name)
            if entry is None or entry.next != to_micros(expected):
                return False
            entry.next = to_micros(next_run_at)
            entry.last = to_micros(last_run_at)
            queues = set()
            for (job, delay), payload in zip(jobs, payloads, strict=True):
                start = now + delay if delay else None
                self._add(job, payload, start, now)
                if start is None:
                    queues.add(job.queue)
            store.notify(list(queues))
            return True

    # testing helpers -------------------------------------------------------------
    async def join(self, queue: str | None = None, timeout: float | None = None) -> None:
        """Wait until no job (of `queue`, or of any queue) is queued, running, or
        scheduled/failed and due. Jobs scheduled for later do not count.

        Raises:
            TimeoutError: still busy after `timeout` seconds.
        """
        limit = optional_duration(timeout, "timeout")
        deadline = None if limit is None else time.monotonic() + limit
        store = self._store
        while True:
            with store.lock:
                queues = [queue] if queue is not None else list(store.counts)
                if not self._busy(queues, time.time()):
                    return
                waiter = _Waiter(None)
                store.change_waiters.append(waiter)
            delay = 0.05  # also catches jobs becoming due, which notify nobody
            if deadline is not None:
                delay = min(delay, deadline - time.monotonic())
            try:
                if delay <= 0:
                    raise TimeoutError(f"{self!r} still has work after {limit:g}s")
                await asyncio.wait([waiter.future], timeout=delay)
            finally:
                with store.lock:
                    if waiter in store.change_waiters:
                        store.change_waiters.remove(waiter)

    drain = join

    def _busy(self, queues: Sequence[str], now: float) -> bool:
        """True if a job of `queues` is queued, running, or scheduled/failed and due."""
        store = self._store
        for queue in queues:
            counts = store.counts.get(queue)
            if counts is not None and (counts[_QUEUED] or counts[_RUNNING]):
                return True
        for queue in queues:
            for when, gen, job_id in store.timed.get(queue, ()):
                entry = store.valid(gen, job_id)
                if entry is not None and entry.state in _TIMED and when <= now:
                    return True
        return False


def _check_schedule_name(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"schedule name must be a str, got {name!r}")
    if not name:
        raise ValueError("schedule name must be a non-empty str")
