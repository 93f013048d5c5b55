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
from collections.abc import Mapping, Sequence
from datetime import timedelta
from urllib.parse import urlsplit

from pywork._durations import optional_duration
from pywork.brokers.base import (
    LEASE_EXPIRED,
    Claimed,
    Delivery,
    JobState,
    NewJob,
    Outcome,
    QueueStats,
    StoredJob,
    StoredSchedule,
)
from pywork.brokers.front import BrokerFront, duplicate_id
from pywork.cron import ScheduleSpec
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

    def stored(self) -> StoredSchedule:
        spec = self.spec
        return StoredSchedule(
            self.name, self.payload, spec.every, spec.cron, spec.timezone, spec.jitter,
            spec.misfire, self.next, self.last,
        )  # fmt: skip


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
        "progress",
        "queue",
        "result",
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
        self.result: bytes | None = None
        self.progress: bytes | None = None


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
            entry.error = f"{LEASE_EXPIRED[0]}{entry.attempts}{LEASE_EXPIRED[1]}"
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


class MemoryBroker(BrokerFront):
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
        super().__init__(f"memory://{name or ''}", retention=retention)
        self.name = name
        if name is None:
            self._memory = _Store()
        else:
            with _NAMED_LOCK:
                store = _NAMED.get(name)
                if store is None:
                    store = _NAMED[name] = _Store()
            self._memory = store

    @classmethod
    async def from_url(cls, url: str, *, retention: float = 3600.0) -> MemoryBroker:
        """Open ``memory://`` (a private store) or ``memory://NAME`` (shared by name)."""
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise ValueError(f"MemoryBroker needs a memory:// url, got {url!r}")
        name = (parts.netloc + parts.path).strip("/") or None
        return cls(name, retention=retention)

    async def twin(self) -> MemoryBroker:
        """This broker itself: its store is thread-safe and bound to no event loop, so
        another thread's loop may use it as it is (see :meth:`BrokerFront.twin`)."""
        self._check_open()
        return self

    # storage primitives -----------------------------------------------------------
    def _add(self, job: NewJob, now: float) -> str:
        job_id, queue, handler, key, max_retries, payload, at, delay = job
        store = self._memory
        if key is not None:
            holder = store.keys.get(key)
            if holder is not None:
                return holder
            store.keys[key] = job_id
        entry = _Entry(job_id, queue, handler, payload, key, max_retries, next(store.seq), now)
        store.jobs[job_id] = entry
        store.counts[queue][_QUEUED] += 1
        start = at if at is not None else (now + delay if delay else None)
        if start is None or start <= now:
            store.push_ready(entry)
        else:
            store.set_state(entry, _SCHEDULED)
            store.push_timed(entry, start)
        return job_id

    def _add_all(self, jobs: list[NewJob], now: float) -> list[str]:
        """Store `jobs` (all or nothing: ids are checked first) and wake their queues."""
        store = self._memory
        if len(jobs) == 1:  # enqueue(): the common case, without the batch's sets
            job = jobs[0]
            if job.id in store.jobs:
                raise duplicate_id(job.id)
            ids = [self._add(job, now)]
            store.notify((job.queue,))
            return ids
        for job in jobs:
            if job.id in store.jobs:
                raise duplicate_id(job.id)
        ids = [self._add(job, now) for job in jobs]
        store.notify(list({job.queue for job in jobs}))
        return ids

    async def _store(self, jobs: list[NewJob]) -> list[str]:
        with self._memory.lock:
            return self._add_all(jobs, time.time())

    @staticmethod
    def _stored(entry: _Entry) -> StoredJob:
        return StoredJob(
            entry.id, entry.handler, entry.queue, entry.payload, entry.state.value,
            None if entry.status is None else int(entry.status), entry.attempts, entry.error,
            entry.enqueued_at, entry.started_at, entry.finished_at, entry.key,
            entry.run_at if entry.state in _TIMED else None, entry.result, entry.progress,
        )  # fmt: skip

    async def _get(self, job_id: str) -> StoredJob | None:
        store = self._memory
        with store.lock:
            entry = store.jobs.get(job_id)
            return None if entry is None else self._stored(entry)

    async def _cancel(self, job_id: str) -> bool:
        store = self._memory
        with store.lock:
            entry = store.jobs.get(job_id)
            if entry is None or entry.state not in _ACTIVE:
                return False
            store.finish(entry, _CANCELLED, time.time(), self.retention)
            store.notify(())
            return True

    async def _stats(self) -> dict[str, QueueStats]:
        store = self._memory
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

    def _dead(self, queue: str | None) -> list[_Entry]:
        return [
            e
            for e in self._memory.jobs.values()
            if e.state is _DEAD and (queue is None or e.queue == queue)
        ]

    async def _dead_letters(self, queue: str | None, limit: int) -> list[StoredJob]:
        with self._memory.lock:
            dead = self._dead(queue)
            dead.sort(key=lambda e: (e.finished_at or 0.0, e.seq))
            return [self._stored(e) for e in dead[:limit]]

    async def _retry_dead(self, job_id: str) -> bool:
        store = self._memory
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
            entry.status = entry.error = entry.result = entry.progress = None
            entry.started_at = entry.finished_at = entry.run_at = None
            store.push_ready(entry)
            store.notify((entry.queue,))
            return True

    async def _purge_dead(self, queue: str | None) -> int:
        store = self._memory
        with store.lock:
            dead = self._dead(queue)
            for entry in dead:
                store.delete(entry)
            if dead:
                store.notify(())
            return len(dead)

    async def _claim(
        self, queues: list[str], limit: int, lease: float, max_retries: int
    ) -> list[Claimed]:
        store = self._memory
        now = time.time()
        token = os.urandom(8).hex()
        claimed: list[Claimed] = []
        with store.lock:
            if now - store.last_cleanup >= _CLEANUP_EVERY:
                store.cleanup(now)
            for queue in queues:
                store.promote(queue, now, max_retries)
            heaps = [store.ready[q] for q in queues if store.ready.get(q)]
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
                claimed.append(Claimed(entry.id, token, entry.attempts, entry.payload))
                heaps = [h for h in heaps if h]
            if claimed:
                store.notify(())
        return claimed

    async def _wait_for_work(self, queues: list[str], timeout: float) -> None:
        store = self._memory
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

    async def _renew(
        self, deliveries: Sequence[Delivery], lease: float, progress: Mapping[str, bytes]
    ) -> dict[str, str]:
        store = self._memory
        now = time.time()
        lost: dict[str, str] = {}
        with store.lock:
            for delivery in deliveries:
                entry = store.jobs.get(delivery.id)
                if entry is not None and entry.token == delivery.token:
                    if entry.state is _RUNNING:
                        entry.gen += 1
                        store.push_timed(entry, now + lease)
                        if delivery.id in progress:
                            entry.progress = progress[delivery.id]
                        continue
                    if entry.state is _CANCELLED:
                        lost[delivery.id] = "cancelled"
                        continue
                lost[delivery.id] = "lost"
        return lost

    async def _settle(self, outcomes: Sequence[Outcome]) -> list[bool]:
        store = self._memory
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
                if outcome.progress is not None:
                    entry.progress = outcome.progress
                state = outcome.state
                if state is _SUCCEEDED:
                    entry.status, entry.error = outcome.status, None
                    entry.result = outcome.result
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
                else:  # QUEUED: released untouched at shutdown
                    entry.attempts = max(0, entry.attempts - 1)
                    entry.run_at = None
                    store.set_state(entry, _QUEUED)
                    store.push_ready(entry)
                    queues.add(entry.queue)
                applied.append(True)
            store.notify(list(queues))
        return applied

    async def _wait_for_finish(self, job_id: str, timeout: float) -> None:
        store = self._memory
        with store.lock:
            waiter = _Waiter(None)  # woken by any change of the store
            store.change_waiters.append(waiter)
        try:
            await asyncio.wait([waiter.future], timeout=timeout)
        finally:
            with store.lock:
                if waiter in store.change_waiters:
                    store.change_waiters.remove(waiter)

    async def _declare_schedule(
        self, name: str, payload: bytes, spec: ScheduleSpec, first_run: int
    ) -> StoredSchedule:
        store = self._memory
        with store.lock:
            old = store.schedules.get(name)
            same = old is not None and spec.same_timing(old.spec)
            entry = _Schedule(
                name,
                payload,
                spec,
                old.next if old is not None and same else first_run,
                None if old is None else old.last,
            )
            store.schedules[name] = entry
            return entry.stored()

    async def _unschedule(self, name: str) -> bool:
        store = self._memory
        with store.lock:
            return store.schedules.pop(name, None) is not None

    async def _schedules(self) -> list[StoredSchedule]:
        store = self._memory
        with store.lock:
            return [entry.stored() for entry in store.schedules.values()]

    async def _due_schedules(self, at: int) -> tuple[list[StoredSchedule], int | None]:
        store = self._memory
        with store.lock:
            due = [e for e in store.schedules.values() if e.next <= at]
            later = [e.next for e in store.schedules.values() if e.next > at]
            due.sort(key=lambda e: (e.next, e.name))
            return [e.stored() for e in due], min(later) if later else None

    async def _fire(
        self, name: str, expected: int, next_run_at: int, last_run_at: int, jobs: list[NewJob]
    ) -> bool:
        store = self._memory
        with store.lock:
            entry = store.schedules.get(name)
            if entry is None or entry.next != expected:
                return False
            self._add_all(jobs, time.time())
            entry.next = next_run_at
            entry.last = last_run_at
            return True

    # testing helpers -------------------------------------------------------------
    async def join(self, queue: str | None = None, timeout: float | None = None) -> None:
        """Wait until no job (of `queue`, or of any queue) is queued, running, or
        scheduled/failed and due. Jobs scheduled for later do not count.

        Raises:
            TimeoutError: still busy after `timeout` seconds.
            BrokerClosed: the broker is closed.
        """
        limit = optional_duration(timeout, "timeout")
        self._check_open()
        deadline = None if limit is None else time.monotonic() + limit
        store = self._memory
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
        store = self._memory
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
