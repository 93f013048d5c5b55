"""SQLiteBroker: the embedded default broker, one SQLite file in WAL mode.

``sqlite:///relative.db`` or ``sqlite:////absolute.db`` (``?synchronous=full`` to fsync
every commit; the default ``normal`` survives any process crash, and loses at most the
last commits on a power cut or OS crash).

Storage: one table, ``pywork_jobs``, one row per job (the encoded job in ``payload``,
its state, attempts, fencing token and timestamps; ``run_at`` is the time the row
next matters: when a scheduled/failed job becomes due, when a lease expires, when a
finished record is purged). A partial index over ready jobs ``(queue, seq) WHERE
state = 'queued'`` makes a claim one indexed ``UPDATE … RETURNING`` inside a
``BEGIN IMMEDIATE`` transaction, which also takes back expired leases and promotes due
jobs. Several processes on one machine can share the file: SQLite serialises writers.

Cluster schedules live in ``pywork_schedules`` (one row per schedule, times as integer
microseconds, indexed on ``next_run_at``); ``fire`` is a conditional ``UPDATE … WHERE
next_run_at = ?`` and the tick's job inserts in one transaction (see docs/schedules.md).

The stdlib ``sqlite3`` module blocks, so every statement runs in one dedicated thread
per broker, never on the event loop. Waking up: enqueues through any SQLiteBroker of
the same file in this process wake waiting consumers at once; enqueues from other
processes are seen by a short poll (``wait`` sleeps at most :data:`POLL_INTERVAL`
seconds), and scheduled jobs, retries and lease expiries by sleeping until the
earliest due time.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

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

__all__ = ["POLL_INTERVAL", "SQLiteBroker"]

#: The longest ``wait`` sleeps before looking at the file again (to see other processes' jobs).
POLL_INTERVAL = 0.25
_CLEANUP_EVERY = 2.0
_ACTIVE_SQL = "('queued', 'scheduled', 'running', 'failed')"
_T = TypeVar("_T")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS pywork_jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    handler TEXT NOT NULL,
    payload BLOB NOT NULL,
    key TEXT,
    max_retries INTEGER,
    state TEXT NOT NULL,
    status INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    token TEXT,
    enqueued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    run_at REAL
);
CREATE INDEX IF NOT EXISTS pywork_jobs_ready ON pywork_jobs (queue, seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS pywork_jobs_timed ON pywork_jobs (state, run_at);
CREATE UNIQUE INDEX IF NOT EXISTS pywork_jobs_key ON pywork_jobs (key)
    WHERE key IS NOT NULL AND state IN {_ACTIVE_SQL};
CREATE TABLE IF NOT EXISTS pywork_schedules (
    name TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    every REAL,
    cron TEXT,
    timezone TEXT NOT NULL,
    jitter REAL NOT NULL,
    misfire TEXT NOT NULL,
    next_run_at INTEGER NOT NULL,
    last_run_at INTEGER
);
CREATE INDEX IF NOT EXISTS pywork_schedules_next ON pywork_schedules (next_run_at);
"""
_SCHEDULE_COLUMNS = (
    "name, payload, every, cron, timezone, jitter, misfire, next_run_at, last_run_at"
)

_COLUMNS = (
    "id, handler, queue, payload, state, status, attempts, error, "
    "enqueued_at, started_at, finished_at, key, run_at"
)


@functools.lru_cache(maxsize=64)
def _claim_sql(n: int) -> tuple[str, str, str]:
    queues = ", ".join("?" * n)
    expire = f"""
        UPDATE pywork_jobs SET
            state = CASE WHEN attempts > coalesce(max_retries, ?) THEN 'dead' ELSE 'queued' END,
            status = CASE WHEN attempts > coalesce(max_retries, ?) THEN 408 ELSE status END,
            error = CASE WHEN attempts > coalesce(max_retries, ?)
                THEN 'JobTimeout: lease expired ' || attempts || ' times (its consumer stopped '
                     || 'renewing it: crashed, killed or stalled)'
                ELSE error END,
            finished_at = CASE WHEN attempts > coalesce(max_retries, ?) THEN ? ELSE NULL END,
            token = NULL, run_at = NULL
        WHERE state = 'running' AND run_at <= ? AND queue IN ({queues})"""
    promote = f"""
        UPDATE pywork_jobs SET state = 'queued', run_at = NULL
        WHERE state IN ('scheduled', 'failed') AND run_at <= ? AND queue IN ({queues})"""
    claim = f"""
        UPDATE pywork_jobs SET state = 'running', attempts = attempts + 1, token = ?,
            started_at = ?, run_at = ?
        WHERE seq IN (
            SELECT seq FROM pywork_jobs WHERE state = 'queued' AND queue IN ({queues})
            ORDER BY seq LIMIT ?)
        RETURNING seq, id, attempts, payload"""
    return expire, promote, claim


@functools.lru_cache(maxsize=64)
def _peek_sql(n: int) -> tuple[str, str]:
    queues = ", ".join("?" * n)
    ready = f"SELECT 1 FROM pywork_jobs WHERE state = 'queued' AND queue IN ({queues}) LIMIT 1"
    due = (
        "SELECT min(run_at) FROM pywork_jobs WHERE state IN ('scheduled', 'failed', 'running') "
        f"AND queue IN ({queues})"
    )
    return ready, due


class _Waiters:
    """Consumers of one file waiting in this process, woken by enqueues from any broker."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None], frozenset[str]]]
        self.waiting = []

    def add(self, queues: Sequence[str]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self.lock:
            self.waiting.append((loop, future, frozenset(queues)))
        return future

    def remove(self, future: asyncio.Future[None]) -> None:
        with self.lock:
            self.waiting = [w for w in self.waiting if w[1] is not future]

    def wake(self, queues: Sequence[str]) -> None:
        with self.lock:
            if not self.waiting:
                return
            woken = [w for w in self.waiting if not w[2].isdisjoint(queues)]
            self.waiting = [w for w in self.waiting if w[2].isdisjoint(queues)]
        for loop, future, _ in woken:
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


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _start_time(at: datetime | None, delay: float | timedelta | None, now: float) -> float | None:
    if at is not None and delay is not None:
        raise ValueError("pass either at= or delay=, not both")
    if at is not None:
        if not isinstance(at, datetime):
            raise TypeError(f"at must be a datetime.datetime, got {at!r}")
        when = at.timestamp()  # naive: local time, as perform_at
        return when if when > now else None
    seconds = optional_duration(delay, "delay")
    return now + seconds if seconds else None


def _check_schedule_name(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"schedule name must be a str, got {name!r}")
    if not name:
        raise ValueError("schedule name must be a non-empty str")


def _schedule_record(row: Sequence[Any]) -> ScheduleRecord:
    name, payload, every, cron, timezone, jitter, misfire, next_run_at, last_run_at = row
    return ScheduleRecord(
        name=name,
        job=decode_job(payload),
        every=every,
        cron=cron,
        timezone=timezone,
        next_run_at=from_micros(next_run_at),
        last_run_at=None if last_run_at is None else from_micros(last_run_at),
        jitter=jitter,
        misfire=misfire,
    )


class SQLiteBroker:
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
        self.path = str(Path(path).expanduser().absolute())
        self.url = f"sqlite:///{path}"
        self.retention = duration(retention, "retention")
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

    async def open(self) -> None:
        """Open the file and create the table if needed (idempotent)."""
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
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 30000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            db.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nCOMMIT;")
        except BaseException:
            db.close()
            raise
        self._db = db

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        executor = self._executor
        if executor is None:
            raise RuntimeError(f"{self!r} is closed")
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def _tx(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `fn` in a write transaction in the broker's thread."""
        return await self._call(functools.partial(self._write, fn))

    async def _ro(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `fn` (reads only) in the broker's thread."""
        return await self._call(functools.partial(self._read, fn))

    def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `fn` in a write transaction (in the broker's thread)."""
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        db = self._db
        assert db is not None
        return fn(db)

    async def close(self) -> None:
        """Close the file and end the broker's thread. Idempotent."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        db, self._db = self._db, None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
        executor.shutdown(wait=True)

    def __repr__(self) -> str:
        return f"<SQLiteBroker {self.path!r}>"

    # producer side --------------------------------------------------------------
    def _insert(
        self, db: sqlite3.Connection, job: Job, payload: bytes, start: float | None, now: float
    ) -> str:
        if job.key is not None:
            row = db.execute(
                f"SELECT id FROM pywork_jobs WHERE key = ? AND state IN {_ACTIVE_SQL}", (job.key,)
            ).fetchone()
            if row is not None:
                return str(row[0])
        try:
            db.execute(
                "INSERT INTO pywork_jobs (id, queue, handler, payload, key, max_retries, state, "
                "enqueued_at, run_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.queue,
                    job.handler,
                    payload,
                    job.key,
                    job.max_retries,
                    "queued" if start is None else "scheduled",
                    now,
                    start,
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"a job with id {job.id!r} is already stored") from exc
        return job.id

    async def enqueue(
        self, job: Job, *, at: datetime | None = None, delay: float | timedelta | None = None
    ) -> str:
        """Store `job` (committed when this returns) and return its id, or the id of
        the active job holding its key.

        Raises:
            SerializationError: args or headers cannot be encoded (nothing is stored).
            ValueError: both `at` and `delay`, a negative delay, or a duplicate job id.
        """
        now = time.time()
        start = _start_time(at, delay, now)
        payload = encode_for_enqueue(job)
        job_id = await self._tx(lambda db: self._insert(db, job, payload, start, now))
        if start is None:
            self._waiters.wake((job.queue,))
        return job_id

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """Store `jobs` in one transaction, all or nothing (every job is encoded first).

        Raises:
            SerializationError: a job cannot be encoded (nothing is stored).
        """
        if isinstance(jobs, Job) or not isinstance(jobs, Sequence):
            raise TypeError(f"jobs must be a sequence of pywork.Job, got {jobs!r}")
        payloads = [encode_for_enqueue(job) for job in jobs]
        if not jobs:
            return []
        now = time.time()

        def insert(db: sqlite3.Connection) -> list[str]:
            return [
                self._insert(db, job, payload, None, now)
                for job, payload in zip(jobs, payloads, strict=True)
            ]

        ids = await self._tx(insert)
        self._waiters.wake(list({job.queue for job in jobs}))
        return ids

    @staticmethod
    def _record(row: Sequence[Any], now: float) -> JobRecord:
        (job_id, handler, queue, payload, state, status, attempts, error, enqueued_at,
         started_at, finished_at, key, run_at) = row  # fmt: skip
        try:
            args = decode_job(payload).args
        except DecodeError:
            args = {}
        if state in ("scheduled", "failed") and run_at is not None and run_at <= now:
            state = "queued"  # due: ready for the next claim
        return JobRecord(
            id=job_id,
            handler=handler,
            queue=queue,
            args=args,
            state=JobState(state),
            status=None if status is None else Status(status),
            attempts=attempts,
            error=error,
            enqueued_at=datetime.fromtimestamp(enqueued_at, UTC),
            started_at=_ts(started_at),
            finished_at=_ts(finished_at),
            key=key,
            run_at=_ts(run_at) if state in ("scheduled", "failed") else None,
        )

    async def get(self, job_id: str) -> JobRecord | None:
        """The record of `job_id`, or None (unknown, or no longer kept)."""
        if not isinstance(job_id, str):
            raise TypeError(f"job_id must be a str, got {job_id!r}")
        row = await self._ro(
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM pywork_jobs WHERE id = ?", (job_id,)
            ).fetchone(),
        )
        return None if row is None else self._record(row, time.time())

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued, scheduled, failed or running job; True if this call did it.

        A running job's consumer learns of it on its next lease renewal; its record is
        kept at least until that lease ends, even with retention 0.
        """
        if not isinstance(job_id, str):
            raise TypeError(f"job_id must be a str, got {job_id!r}")
        retention = self.retention

        def cancel(db: sqlite3.Connection) -> bool:
            now = time.time()
            row = db.execute(
                f"SELECT state, run_at FROM pywork_jobs WHERE id = ? AND state IN {_ACTIVE_SQL}",
                (job_id,),
            ).fetchone()
            if row is None:
                return False
            state, run_at = row
            keep = now + retention
            if state == "running":
                keep = max(keep, run_at or now)
            elif retention == 0:
                db.execute("DELETE FROM pywork_jobs WHERE id = ?", (job_id,))
                return True
            db.execute(
                "UPDATE pywork_jobs SET state = 'cancelled', finished_at = ?, run_at = ? "
                "WHERE id = ?",
                (now, keep, job_id),
            )
            return True

        return await self._tx(cancel)

    async def stats(self) -> dict[str, QueueStats]:
        """Per-queue counts of jobs in each state (due scheduled/failed jobs count as queued)."""
        now = time.time()
        rows = await self._ro(
            lambda db: db.execute(
                "SELECT queue, CASE WHEN state IN ('scheduled', 'failed') AND run_at <= ? "
                "THEN 'queued' ELSE state END AS s, count(*) FROM pywork_jobs GROUP BY queue, s",
                (now,),
            ).fetchall(),
        )
        counts: dict[str, dict[str, int]] = {}
        for queue, state, n in rows:
            counts.setdefault(queue, {})[state] = n
        return {queue: QueueStats(**c) for queue, c in counts.items()}

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[JobRecord]:
        """Dead jobs (of `queue`, or all), oldest death first, at most `limit`."""
        limit = positive_int(limit, "limit")
        sql = f"SELECT {_COLUMNS} FROM pywork_jobs WHERE state = 'dead'"
        params: tuple[Any, ...] = ()
        if queue is not None:
            sql += " AND queue = ?"
            params = (queue,)
        sql += " ORDER BY finished_at, seq LIMIT ?"
        rows = await self._ro(lambda db: db.execute(sql, (*params, limit)).fetchall())
        now = time.time()
        return [self._record(row, now) for row in rows]

    async def retry_dead(self, job_id: str) -> bool:
        """Queue a dead job again with attempts 0; True if it was dead."""
        if not isinstance(job_id, str):
            raise TypeError(f"job_id must be a str, got {job_id!r}")
        sql = (
            "UPDATE pywork_jobs SET state = 'queued', attempts = 0, status = NULL, error = NULL, "
            "token = NULL, started_at = NULL, finished_at = NULL, run_at = NULL{} "
            "WHERE id = ? AND state = 'dead' RETURNING queue"
        )

        def retry(db: sqlite3.Connection) -> str | None:
            try:
                row = db.execute(sql.format(""), (job_id,)).fetchone()
            except sqlite3.IntegrityError:  # another active job holds its key now
                row = db.execute(sql.format(", key = NULL"), (job_id,)).fetchone()
            return None if row is None else str(row[0])

        queue = await self._tx(retry)
        if queue is None:
            return False
        self._waiters.wake((queue,))
        return True

    async def purge_dead(self, queue: str | None = None) -> int:
        """Delete dead jobs (of `queue`, or all); return how many."""
        sql = "DELETE FROM pywork_jobs WHERE state = 'dead'"
        params: tuple[str, ...] = ()
        if queue is not None:
            sql += " AND queue = ?"
            params = (queue,)
        return await self._tx(lambda db: db.execute(sql, params).rowcount)

    # consumer side --------------------------------------------------------------
    async def claim(
        self, queues: Sequence[str], limit: int, *, lease: float, max_retries: int
    ) -> list[Delivery]:
        """Lease up to `limit` ready jobs of `queues`, oldest first (see :class:`Broker`)."""
        queues = list(queues)
        token = os.urandom(8).hex()
        expire, promote, claim = _claim_sql(len(queues))

        def run(db: sqlite3.Connection) -> list[Any]:
            now = time.time()
            mr = max_retries
            db.execute(expire, (mr, mr, mr, mr, now, now, *queues))
            db.execute(promote, (now, *queues))
            rows = db.execute(claim, (token, now, now + lease, *queues, limit)).fetchall()
            if now - self._last_cleanup >= _CLEANUP_EVERY:
                self._last_cleanup = now
                db.execute(
                    "DELETE FROM pywork_jobs WHERE state IN ('succeeded', 'cancelled') "
                    "AND run_at <= ?",
                    (now,),
                )
            return rows

        rows = await self._tx(run)
        rows.sort()
        deliveries = []
        for _, job_id, attempts, payload in rows:
            try:
                deliveries.append(Delivery(job_id, token, attempts, decode_job(payload)))
            except DecodeError as exc:
                deliveries.append(
                    Delivery(job_id, token, attempts, None, f"{type(exc).__name__}: {exc}")
                )
        return deliveries

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a job of `queues` may be ready, or after `timeout` seconds.

        Wakes at once for jobs enqueued by this process; jobs enqueued by other
        processes are seen within :data:`POLL_INTERVAL` seconds.
        """
        queues = list(queues)
        future = self._waiters.add(queues)
        try:
            ready_sql, due_sql = _peek_sql(len(queues))

            def peek(db: sqlite3.Connection) -> tuple[bool, float | None]:
                ready = db.execute(ready_sql, queues).fetchone() is not None
                return ready, db.execute(due_sql, queues).fetchone()[0]

            ready, due = await self._ro(peek)
            if ready:
                return
            delay = min(timeout, POLL_INTERVAL)
            if due is not None:
                delay = min(delay, max(0.0, due - time.time()))
            if delay > 0:
                await asyncio.wait([future], timeout=delay)
        finally:
            self._waiters.remove(future)

    wait_for_work = wait  # (until this backend moves onto the BrokerFront)

    async def renew(self, deliveries: Sequence[Delivery], *, lease: float) -> dict[str, str]:
        """Extend the leases still held; ``{id: "cancelled" | "lost"}`` for the others."""
        if not deliveries:
            return {}

        def renew(db: sqlite3.Connection) -> dict[str, str]:
            until = time.time() + lease
            lost: dict[str, str] = {}
            for d in deliveries:
                cursor = db.execute(
                    "UPDATE pywork_jobs SET run_at = ? "
                    "WHERE id = ? AND token = ? AND state = 'running'",
                    (until, d.id, d.token),
                )
                if cursor.rowcount == 1:
                    continue
                row = db.execute(
                    "SELECT state, token FROM pywork_jobs WHERE id = ?", (d.id,)
                ).fetchone()
                cancelled = row is not None and row[0] == "cancelled" and row[1] == d.token
                lost[d.id] = "cancelled" if cancelled else "lost"
            return lost

        return await self._tx(renew)

    async def settle(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Apply outcomes in one transaction, each fenced by its token."""
        if not outcomes:
            return []
        retention = self.retention
        fence = "WHERE id = ? AND token = ? AND state = 'running' RETURNING queue"

        def settle(db: sqlite3.Connection) -> tuple[list[bool], set[str]]:
            now = time.time()
            applied: list[bool] = []
            woken: set[str] = set()
            for o in outcomes:
                d, state = o.delivery, o.state
                status = None if o.status is None else int(o.status)
                if state is JobState.SUCCEEDED:
                    if retention == 0:
                        cursor = db.execute(f"DELETE FROM pywork_jobs {fence}", (d.id, d.token))
                    else:
                        cursor = db.execute(
                            "UPDATE pywork_jobs SET state = 'succeeded', status = ?, error = NULL,"
                            f" token = NULL, finished_at = ?, run_at = ? {fence}",
                            (status, now, now + retention, d.id, d.token),
                        )
                elif state is JobState.FAILED:
                    cursor = db.execute(
                        "UPDATE pywork_jobs SET state = 'failed', status = ?, error = ?, "
                        f"token = NULL, run_at = ? {fence}",
                        (status, o.error, now + (o.retry_in or 0.0), d.id, d.token),
                    )
                elif state is JobState.DEAD:
                    cursor = db.execute(
                        "UPDATE pywork_jobs SET state = 'dead', status = ?, error = ?, "
                        f"token = NULL, finished_at = ?, run_at = NULL {fence}",
                        (status, o.error, now, d.id, d.token),
                    )
                elif state is JobState.QUEUED:
                    cursor = db.execute(
                        "UPDATE pywork_jobs SET state = 'queued', token = NULL, run_at = NULL, "
                        f"attempts = max(attempts - 1, 0) {fence}",
                        (d.id, d.token),
                    )
                else:
                    raise ValueError(f"cannot settle a job as {state!r}")
                row = cursor.fetchone()
                applied.append(row is not None)
                if row is not None and state in (JobState.FAILED, JobState.QUEUED):
                    woken.add(row[0])  # consumers sleeping in wait() look again
            return applied, woken

        applied, woken = await self._tx(settle)
        if woken:
            self._waiters.wake(list(woken))
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

        def upsert(db: sqlite3.Connection) -> ScheduleRecord:
            old = db.execute(
                "SELECT every, cron, timezone, next_run_at FROM pywork_schedules WHERE name = ?",
                (name,),
            ).fetchone()
            stored = None if old is None else ScheduleSpec(old[0], old[1], old[2], 0.0, "skip")
            if stored is not None and spec.same_timing(stored):
                next_run = int(old[3])
            else:
                next_run = to_micros(spec.first_run(cronlib.now()))
            row = db.execute(
                "INSERT INTO pywork_schedules (name, payload, every, cron, timezone, jitter, "
                "misfire, next_run_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET payload = excluded.payload, "
                "every = excluded.every, cron = excluded.cron, timezone = excluded.timezone, "
                "jitter = excluded.jitter, misfire = excluded.misfire, "
                f"next_run_at = excluded.next_run_at RETURNING {_SCHEDULE_COLUMNS}",
                (name, payload, spec.every, spec.cron, spec.timezone, spec.jitter,
                 spec.misfire, next_run),
            ).fetchone()  # fmt: skip
            return _schedule_record(row)

        return await self._tx(upsert)

    async def unschedule(self, name: str) -> bool:
        """Delete the schedule `name`; True if it existed."""
        check_schedule_name(name)
        return await self._tx(
            lambda db: (
                db.execute("DELETE FROM pywork_schedules WHERE name = ?", (name,)).rowcount == 1
            )
        )

    async def schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by name."""
        rows = await self._ro(
            lambda db: db.execute(
                f"SELECT {_SCHEDULE_COLUMNS} FROM pywork_schedules ORDER BY name"
            ).fetchall()
        )
        return [_schedule_record(row) for row in rows]

    async def due_schedules(self, at: datetime) -> tuple[list[ScheduleRecord], datetime | None]:
        """The schedules due at `at`, and the earliest next run time of the others."""
        limit = to_micros(at)

        def due(db: sqlite3.Connection) -> tuple[list[Any], int | None]:
            rows = db.execute(
                f"SELECT {_SCHEDULE_COLUMNS} FROM pywork_schedules WHERE next_run_at <= ? "
                "ORDER BY next_run_at, name",
                (limit,),
            ).fetchall()
            later = db.execute(
                "SELECT min(next_run_at) FROM pywork_schedules WHERE next_run_at > ?", (limit,)
            ).fetchone()[0]
            return rows, later

        rows, later = await self._ro(due)
        return [_schedule_record(row) for row in rows], (
            None if later is None else from_micros(later)
        )

    async def fire(
        self,
        name: str,
        expected: datetime,
        next_run_at: datetime,
        last_run_at: datetime,
        jobs: Sequence[tuple[Job, float | None]],
    ) -> bool:
        """If `name` still runs next at `expected`, move it on and enqueue `jobs`, in one
        transaction (a conditional UPDATE, then the inserts).

        Returns:
            True if this call won the compare-and-set (and enqueued the jobs); False
            (nothing changed) if another consumer fired it first or it was removed.
        """
        payloads = [encode_job(job) for job, _ in jobs]

        def fire(db: sqlite3.Connection) -> set[str] | None:
            cursor = db.execute(
                "UPDATE pywork_schedules SET next_run_at = ?, last_run_at = ? "
                "WHERE name = ? AND next_run_at = ?",
                (to_micros(next_run_at), to_micros(last_run_at), name, to_micros(expected)),
            )
            if cursor.rowcount != 1:
                return None
            now = time.time()
            ready: set[str] = set()
            for (job, delay), payload in zip(jobs, payloads, strict=True):
                start = now + delay if delay else None
                self._insert(db, job, payload, start, now)
                if start is None:
                    ready.add(job.queue)
            return ready

        ready = await self._tx(fire)
        if ready is None:
            return False
        if ready:
            self._waiters.wake(list(ready))
        return True
