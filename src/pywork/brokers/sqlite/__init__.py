"""SQLiteBroker: the embedded default broker, one SQLite file in WAL mode.

``sqlite:///relative.db`` or ``sqlite:////absolute.db`` (``?synchronous=full`` to fsync
every commit; the default ``normal`` survives any process crash, and loses at most the
last commits on a power cut or OS crash).

The broker is a :class:`~pywork.brokers.front.BrokerFront` (which checks arguments,
encodes, builds records and maps errors); this package holds only the storage: this
module runs the statements, ``queries.sql`` holds the schema and every query by name.

Storage: one table, ``pywork_jobs``, one row per job (the encoded job in ``payload``,
its state, attempts, fencing token and timestamps; ``run_at`` is the time the row
next matters: when a scheduled/failed job becomes due, when a lease expires, when a
finished record is purged; ``result`` and ``progress`` the encoded JSON of a succeeded
job's result and of its latest progress report, the latter written by the renewal's own
``UPDATE``). A partial index over ready jobs ``(queue, seq) WHERE
state = 'queued'`` makes a claim one indexed ``UPDATE … RETURNING`` inside a
``BEGIN IMMEDIATE`` transaction, which also takes back expired leases and promotes due
jobs. Several processes on one machine can share the file: SQLite serialises writers.

Cluster schedules live in ``pywork_schedules`` (one row per schedule, times as integer
microseconds, indexed on ``next_run_at``); ``fire`` is a conditional ``UPDATE … WHERE
next_run_at = ?`` and the tick's job inserts in one transaction (see docs/schedules.md).

The stdlib ``sqlite3`` module blocks, so every statement runs in one dedicated thread
per broker, never on the event loop. Waking up: enqueues through any SQLiteBroker of
the same file in this process wake waiting consumers at once; enqueues from other
processes are seen by a short poll (``wait_for_work`` sleeps at most
:data:`POLL_INTERVAL` seconds), and scheduled jobs, retries and lease expiries by
sleeping until the earliest due time. ``broker.wait(job_id)`` likewise: woken at once by
a settle, cancel or lease-expiry death through a broker of this process, else it looks
at the job again every :data:`POLL_INTERVAL` seconds.

A file created by an older pywork gains the ``result`` and ``progress`` columns when a
broker opens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

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
from pywork.brokers.front import BrokerFront, duplicate_id, queue_stats
from pywork.brokers.queries import load_queries
from pywork.cron import ScheduleSpec
from pywork.errors import BrokerError, BrokerUnavailable
from pywork.status import Status

__all__ = ["POLL_INTERVAL", "SQLiteBroker"]

#: The longest ``wait_for_work`` and ``wait(job_id)`` sleep before looking at the file
#: again (to see other processes' jobs and outcomes).
POLL_INTERVAL = 0.25
_CLEANUP_EVERY = 2.0
_T = TypeVar("_T")

_Q = load_queries(__name__, "queries.sql")
_TIMEOUT = int(Status.TIMEOUT)
# the primary result codes meaning the file cannot be used at all (not a failed statement)
_UNAVAILABLE = frozenset(
    (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM)
)


@functools.lru_cache(maxsize=64)
def _claim_sql(n: int) -> tuple[str, str, str]:
    """The expire, promote and lease statements of a claim over `n` queues."""
    queues = ", ".join("?" * n)
    return (
        _Q["claim_expire"].format(queues=queues),
        _Q["claim_promote"].format(queues=queues),
        _Q["claim_lease"].format(queues=queues),
    )


@functools.lru_cache(maxsize=64)
def _peek_sql(n: int) -> tuple[str, str]:
    """The ready and earliest-due queries of a wait over `n` queues."""
    queues = ", ".join("?" * n)
    return _Q["peek_ready"].format(queues=queues), _Q["peek_due"].format(queues=queues)


class _Waiters:
    """The waiters on one file in this process: consumers in ``wait_for_work``, woken by
    enqueues (and retries) from any broker of the file, and callers of ``broker.wait``,
    woken when their job finishes through any broker of the file."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None], frozenset[str]]]
        self.waiting = []
        self.finishing: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]]
        self.finishing = {}

    def add(self, queues: Sequence[str]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self.lock:
            self.waiting.append((loop, future, frozenset(queues)))
        return future

    def remove(self, future: asyncio.Future[None]) -> None:
        with self.lock:
            self.waiting = [w for w in self.waiting if w[1] is not future]

    def wake(self, queues: Collection[str]) -> None:
        with self.lock:
            if not self.waiting:
                return
            woken = [w for w in self.waiting if not w[2].isdisjoint(queues)]
            self.waiting = [w for w in self.waiting if w[2].isdisjoint(queues)]
        for loop, future, _ in woken:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)

    def add_finish(self, job_id: str) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self.lock:
            self.finishing.setdefault(job_id, []).append((loop, future))
        return future

    def remove_finish(self, job_id: str, future: asyncio.Future[None]) -> None:
        with self.lock:
            left = [w for w in self.finishing.get(job_id, ()) if w[1] is not future]
            if left:
                self.finishing[job_id] = left
            else:
                self.finishing.pop(job_id, None)

    def finished(self, job_ids: Collection[str]) -> None:
        """Wake the ``broker.wait`` callers of these jobs (a dict check when none wait)."""
        if not self.finishing:
            return
        with self.lock:
            woken = [w for job_id in job_ids for w in self.finishing.pop(job_id, ())]
        for loop, future in woken:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_FILES: dict[str, _Waiters] = {}
_FILES_LOCK = threading.Lock()


def _waiters_of(path: str) -> _Waiters:
    with _FILES_LOCK:
        waiters = _FILES.get(path)
        if waiters is None:
            waiters = _FILES[path] = _Waiters()
        return waiters


def _one(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Any:
    return db.execute(sql, params).fetchone()


def _all(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    return db.execute(sql, params).fetchall()


def _count(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    return db.execute(sql, params).rowcount


class SQLiteBroker(BrokerFront):
    """A broker in one SQLite file (WAL), shareable by the processes of one machine.

    Args:
        path: the database file (created with its directory's permissions if missing).
        retention: seconds the records of succeeded and cancelled jobs are kept.
        synchronous: ``"normal"`` (default: durable across process crashes) or
            ``"full"`` (also across power loss; slower).

    Use :meth:`from_url` (or :func:`pywork.connect`) to get an opened broker.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention: float | timedelta = 3600.0,
        synchronous: str = "normal",
    ) -> None:
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise TypeError(f"path must be a non-empty str or path, got {path!r}")
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', got {synchronous!r}")
        super().__init__(f"sqlite:///{path}", retention=retention)
        self.path = str(Path(path).expanduser().absolute())
        self.synchronous = synchronous
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._waiters = _waiters_of(os.path.realpath(self.path))
        self._last_cleanup = 0.0

    @classmethod
    async def from_url(cls, url: str, *, retention: float = 3600.0) -> SQLiteBroker:
        """Open ``sqlite:///relative.db`` or ``sqlite:////absolute.db``.

        Raises:
            ValueError: the url has no path or an unknown option.
            BrokerUnavailable: the file cannot be opened or created.
        """
        parts = urlsplit(url)
        if parts.scheme != "sqlite":
            raise ValueError(f"SQLiteBroker needs a sqlite:// url, got {url!r}")
        if parts.netloc:
            raise ValueError(
                f"sqlite url {url!r} has a host; use sqlite:///relative.db or sqlite:////abs.db"
            )
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise ValueError(f"sqlite url {url!r} names no file; use sqlite:///pywork.db")
        options = parse_qs(parts.query)
        unknown = set(options) - {"synchronous"}
        if unknown:
            raise ValueError(f"unknown sqlite url options {sorted(unknown)}; known: synchronous")
        synchronous = options.get("synchronous", ["normal"])[-1].lower()
        broker = cls(path, retention=retention, synchronous=synchronous)
        broker.url = url
        await broker.open()
        return broker

    def __repr__(self) -> str:
        return f"<SQLiteBroker {self.path!r}>"

    def _map_error(self, exc: Exception) -> BrokerError | None:
        if not isinstance(exc, sqlite3.Error):
            return None
        code = getattr(exc, "sqlite_errorcode", None)  # None when not from the library
        if (
            isinstance(exc, sqlite3.OperationalError)
            and code is not None
            and code & 0xFF in _UNAVAILABLE
        ):
            return BrokerUnavailable(f"cannot use the SQLite database {self.path}: {exc}")
        return BrokerError(f"SQLite database {self.path}: {exc}")

    # the broker's thread ------------------------------------------------------------
    async def _open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pywork-sqlite")
        try:
            await self._call(self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _connect(self) -> None:
        with contextlib.suppress(OSError):  # a new file is the owner's alone (0600)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 30000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            db.executescript(f"BEGIN IMMEDIATE;\n{_Q['schema']}\nCOMMIT;")
            self._db = db
            self._write(self._upgrade)
        except BaseException:
            self._db = None
            db.close()
            raise

    @staticmethod
    def _upgrade(db: sqlite3.Connection) -> None:
        """Add the columns a file created by an older pywork lacks (in a write
        transaction, so concurrent openers add each column once)."""
        columns = {row[0] for row in db.execute(_Q["job_columns"])}
        added = {"result": _Q["add_result_column"], "progress": _Q["add_progress_column"]}
        for column, add in added.items():
            if column not in columns:
                db.execute(add)

    async def _close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        db, self._db = self._db, None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
        executor.shutdown(wait=True)

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        executor = self._executor
        if executor is None:
            raise RuntimeError(f"{self!r} is not open: await broker.open() first")
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def _tx(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(db, *args)`` in a write transaction in the broker's thread."""
        return await self._call(self._write, fn, *args)

    async def _ro(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(db, *args)`` (reads only) in the broker's thread."""
        return await self._call(self._read, fn, *args)

    def _write(self, fn: Callable[..., _T], *args: Any) -> _T:
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db, *args)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    def _read(self, fn: Callable[..., _T], *args: Any) -> _T:
        db = self._db
        assert db is not None
        return fn(db, *args)

    # producer side ----------------------------------------------------------------
    @staticmethod
    def _insert(db: sqlite3.Connection, jobs: list[NewJob]) -> tuple[list[str], set[str]]:
        """Store `jobs` (in the caller's transaction): their ids, and the queues of the
        jobs ready now."""
        now = time.time()
        holder_sql, insert_sql = _Q["key_holder"], _Q["insert"]
        ids: list[str] = []
        ready: set[str] = set()
        for job in jobs:
            if job.key is not None:
                row = db.execute(holder_sql, (job.key,)).fetchone()
                if row is not None:
                    ids.append(str(row[0]))
                    continue
            start = job.at if job.at is not None else (now + job.delay if job.delay else None)
            due = start is None or start <= now
            try:
                db.execute(
                    insert_sql,
                    (job.id, job.queue, job.handler, job.payload, job.key, job.max_retries,
                     "queued" if due else "scheduled", now, None if due else start),
                )  # fmt: skip
            except sqlite3.IntegrityError as exc:
                raise duplicate_id(job.id) from exc
            ids.append(job.id)
            if due:
                ready.add(job.queue)
        return ids, ready

    async def _store(self, jobs: list[NewJob]) -> list[str]:
        ids, ready = await self._tx(self._insert, jobs)
        if ready:
            self._waiters.wake(ready)
        return ids

    async def _get(self, job_id: str) -> StoredJob | None:
        row = await self._ro(_one, _Q["get"], (job_id,))
        return None if row is None else StoredJob._make(row)

    async def _cancel(self, job_id: str) -> bool:
        cancelled = await self._tx(self._cancel_in, job_id, self.retention)
        if cancelled:
            self._waiters.finished((job_id,))
        return cancelled

    @staticmethod
    def _cancel_in(db: sqlite3.Connection, job_id: str, retention: float) -> bool:
        now = time.time()
        row = db.execute(_Q["live_job"], (job_id,)).fetchone()
        if row is None:
            return False
        state, run_at = row
        keep = now + retention
        if state == "running":
            keep = max(keep, run_at or now)  # its consumer learns of it on renew
        elif retention == 0:
            db.execute(_Q["delete_job"], (job_id,))
            return True
        db.execute(_Q["cancel"], (now, keep, job_id))
        return True

    async def _stats(self) -> dict[str, QueueStats]:
        return queue_stats(await self._ro(_all, _Q["stats"], (time.time(),)))

    async def _dead_letters(self, queue: str | None, limit: int) -> list[StoredJob]:
        rows = await self._ro(_all, _Q["dead_letters"], (queue, limit))
        return [StoredJob._make(row) for row in rows]

    async def _retry_dead(self, job_id: str) -> bool:
        queue = await self._tx(self._retry_in, job_id)
        if queue is None:
            return False
        self._waiters.wake((queue,))
        return True

    @staticmethod
    def _retry_in(db: sqlite3.Connection, job_id: str) -> str | None:
        try:
            row = db.execute(_Q["retry_dead"], (job_id,)).fetchone()
        except sqlite3.IntegrityError:  # another live job holds its key now
            row = db.execute(_Q["retry_dead_without_key"], (job_id,)).fetchone()
        return None if row is None else str(row[0])

    async def _purge_dead(self, queue: str | None) -> int:
        return await self._tx(_count, _Q["purge_dead"], (queue,))

    # consumer side ----------------------------------------------------------------
    async def _claim(
        self, queues: list[str], limit: int, lease: float, max_retries: int
    ) -> list[Claimed]:
        claimed, dead = await self._tx(self._claim_in, queues, limit, lease, max_retries)
        if dead:
            self._waiters.finished(dead)
        return claimed

    def _claim_in(
        self, db: sqlite3.Connection, queues: list[str], limit: int, lease: float, max_retries: int
    ) -> tuple[list[Claimed], list[str]]:
        """The leased jobs, and the ids of the jobs whose lease expired once too often."""
        expire, promote, claim = _claim_sql(len(queues))
        token = os.urandom(8).hex()
        now = time.time()
        expired = db.execute(expire, (max_retries, now, *LEASE_EXPIRED, _TIMEOUT, *queues))
        dead = [job_id for state, job_id in expired.fetchall() if state == "dead"]
        db.execute(promote, (now, *queues))
        rows = db.execute(claim, (token, now, now + lease, *queues, limit)).fetchall()
        if now - self._last_cleanup >= _CLEANUP_EVERY:
            self._last_cleanup = now
            db.execute(_Q["purge_finished"], (now,))
        rows.sort()  # RETURNING has no order: oldest (lowest seq) first
        claimed = [
            Claimed(job_id, token, attempts, payload) for _, job_id, attempts, payload in rows
        ]
        return claimed, dead

    async def _wait_for_work(self, queues: list[str], timeout: float) -> None:
        """Wakes at once for jobs enqueued by this process; jobs enqueued by other
        processes are seen within :data:`POLL_INTERVAL` seconds."""
        future = self._waiters.add(queues)
        try:
            ready, due = await self._ro(self._peek, queues)
            if ready:
                return
            delay = min(timeout, POLL_INTERVAL)
            if due is not None:
                delay = min(delay, max(0.0, due - time.time()))
            if delay > 0:
                await asyncio.wait([future], timeout=delay)
        finally:
            self._waiters.remove(future)

    @staticmethod
    def _peek(db: sqlite3.Connection, queues: list[str]) -> tuple[bool, float | None]:
        ready_sql, due_sql = _peek_sql(len(queues))
        ready = db.execute(ready_sql, queues).fetchone() is not None
        return ready, db.execute(due_sql, queues).fetchone()[0]

    async def _renew(
        self, deliveries: Sequence[Delivery], lease: float, progress: Mapping[str, bytes]
    ) -> dict[str, str]:
        return await self._tx(self._renew_in, deliveries, lease, progress)

    @staticmethod
    def _renew_in(
        db: sqlite3.Connection,
        deliveries: Sequence[Delivery],
        lease: float,
        progress: Mapping[str, bytes],
    ) -> dict[str, str]:
        """Each renewal is one UPDATE that also stores the job's progress, if reported."""
        until = time.time() + lease
        renew_sql = _Q["renew"]
        lost: dict[str, str] = {}
        for d in deliveries:
            report = progress.get(d.id)
            if db.execute(renew_sql, (until, report, d.id, d.token)).rowcount == 1:
                continue
            row = db.execute(_Q["lease_holder"], (d.id,)).fetchone()
            cancelled = row is not None and row[0] == "cancelled" and row[1] == d.token
            lost[d.id] = "cancelled" if cancelled else "lost"
        return lost

    async def _settle(self, outcomes: Sequence[Outcome]) -> list[bool]:
        applied, woken, finished = await self._tx(self._settle_in, outcomes, self.retention)
        if woken:
            self._waiters.wake(woken)  # consumers sleeping in wait_for_work look again
        if finished:
            self._waiters.finished(finished)  # callers of broker.wait(job_id)
        return applied

    @staticmethod
    def _settle_in(
        db: sqlite3.Connection, outcomes: Sequence[Outcome], retention: float
    ) -> tuple[list[bool], set[str], list[str]]:
        """Per outcome applied?, the queues to wake consumers of, the jobs that ended."""
        now = time.time()
        applied: list[bool] = []
        woken: set[str] = set()
        finished: list[str] = []
        for o in outcomes:
            d, state, report = o.delivery, o.state, o.progress
            status = None if o.status is None else int(o.status)
            if state is JobState.SUCCEEDED:
                if retention == 0:
                    cursor = db.execute(_Q["settle_succeeded_unkept"], (d.id, d.token))
                else:
                    cursor = db.execute(
                        _Q["settle_succeeded"],
                        (status, now, now + retention, o.result, report, d.id, d.token),
                    )
            elif state is JobState.FAILED:
                cursor = db.execute(
                    _Q["settle_failed"],
                    (status, o.error, now + (o.retry_in or 0.0), report, d.id, d.token),
                )
            elif state is JobState.DEAD:
                cursor = db.execute(
                    _Q["settle_dead"], (status, o.error, now, report, d.id, d.token)
                )
            else:  # QUEUED: released untouched at shutdown
                cursor = db.execute(_Q["settle_queued"], (report, d.id, d.token))
            row = cursor.fetchone()
            applied.append(row is not None)
            if row is None:
                continue
            if state is JobState.SUCCEEDED or state is JobState.DEAD:
                finished.append(d.id)
            else:
                woken.add(row[0])
        return applied, woken, finished

    async def _wait_for_finish(self, job_id: str, timeout: float) -> None:
        """Wakes at once when the job ends through a broker of this process; jobs
        settled or cancelled by other processes are seen within :data:`POLL_INTERVAL`
        seconds (the front looks at the record again after each call)."""
        future = self._waiters.add_finish(job_id)
        try:
            await asyncio.wait([future], timeout=min(timeout, POLL_INTERVAL))
        finally:
            self._waiters.remove_finish(job_id, future)

    # cluster schedules (contract §9) ----------------------------------------------
    async def _declare_schedule(
        self, name: str, payload: bytes, spec: ScheduleSpec, first_run: int
    ) -> StoredSchedule:
        return await self._tx(self._declare_in, name, payload, spec, first_run)

    @staticmethod
    def _declare_in(
        db: sqlite3.Connection, name: str, payload: bytes, spec: ScheduleSpec, first_run: int
    ) -> StoredSchedule:
        old = db.execute(_Q["schedule_timing"], (name,)).fetchone()
        next_run = first_run
        if old is not None and spec.same_timing(ScheduleSpec(old[0], old[1], old[2], 0.0, "skip")):
            next_run = int(old[3])
        row = db.execute(
            _Q["schedule_upsert"],
            (name, payload, spec.every, spec.cron, spec.timezone, spec.jitter, spec.misfire,
             next_run),
        ).fetchone()  # fmt: skip
        return StoredSchedule._make(row)

    async def _unschedule(self, name: str) -> bool:
        return await self._tx(_count, _Q["unschedule"], (name,)) == 1

    async def _schedules(self) -> list[StoredSchedule]:
        rows = await self._ro(_all, _Q["schedules"], ())
        return [StoredSchedule._make(row) for row in rows]

    async def _due_schedules(self, at: int) -> tuple[list[StoredSchedule], int | None]:
        rows, later = await self._ro(self._due_in, at)
        return [StoredSchedule._make(row) for row in rows], later

    @staticmethod
    def _due_in(db: sqlite3.Connection, at: int) -> tuple[list[Any], int | None]:
        rows = db.execute(_Q["due_schedules"], (at,)).fetchall()
        later = db.execute(_Q["next_schedule_after"], (at,)).fetchone()[0]
        return rows, later

    async def _fire(
        self, name: str, expected: int, next_run_at: int, last_run_at: int, jobs: list[NewJob]
    ) -> bool:
        ready = await self._tx(self._fire_in, name, expected, next_run_at, last_run_at, jobs)
        if ready is None:
            return False
        if ready:
            self._waiters.wake(ready)
        return True

    @staticmethod
    def _fire_in(
        db: sqlite3.Connection,
        name: str,
        expected: int,
        next_run_at: int,
        last_run_at: int,
        jobs: list[NewJob],
    ) -> set[str] | None:
        """The queues of the jobs ready now if this call won the compare-and-set, else None."""
        if db.execute(_Q["fire"], (next_run_at, last_run_at, name, expected)).rowcount != 1:
            return None
        return SQLiteBroker._insert(db, jobs)[1]
