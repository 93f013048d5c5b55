"""PostgresBroker: a jobs table claimed with ``FOR UPDATE SKIP LOCKED``, woken by LISTEN/NOTIFY.

``postgresql://user:password@host:port/db?schema=NAME&pool_size=N`` (``postgres://`` too).
Jobs live in ``NAME.jobs`` and cluster schedules in ``NAME.schedules`` (schema default
``pywork``, created at connect if missing). Every broker call is one SQL statement, so one
round trip: claiming a batch (ready jobs, due scheduled/failed jobs and expired leases
alike), settling a batch, renewing a batch, enqueueing a batch, firing a schedule's tick
(a conditional UPDATE and the inserts of its jobs). Consumers sleep on a dedicated LISTEN
connection, bounded by the next due time. See ``docs/brokers-postgres.md`` for the design
and the tuning knobs.

The statements are named queries in ``queries.sql`` and the tables in ``schema.sql``, next
to this file; this module holds the storage primitives under the
:class:`~pywork.brokers.front.BrokerFront`, the LISTEN connection and its waiters, and the
url parsing.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import time
from collections.abc import Coroutine, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeAlias, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from pywork.brokers.base import (
    LEASE_EXPIRED,
    Claimed,
    Delivery,
    NewJob,
    Outcome,
    QueueStats,
    StoredJob,
    StoredSchedule,
)
from pywork.brokers.front import BrokerFront, duplicate_id
from pywork.brokers.queries import load_queries, read_resource
from pywork.cron import ScheduleSpec
from pywork.errors import BrokerClosed, BrokerError, BrokerUnavailable
from pywork.status import Status

__all__ = ["PostgresBroker"]

T = TypeVar("T")
#: Where the statements of an enqueue go: the broker's pool or the caller's connection.
_Db: TypeAlias = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy

#: Default schema of the jobs table.
DEFAULT_SCHEMA = "pywork"
#: Default most connections in the pool (the LISTEN connection is extra).
DEFAULT_POOL_SIZE = 10
#: Seconds between two lazy deletions of expired succeeded/cancelled records.
PURGE_EVERY = 2.0
#: Records deleted by one lazy purge statement.
PURGE_BATCH = 10_000
#: Marker stored as the jobs table's comment once the DDL is complete (bump on schema
#: changes: a connect finding an older marker runs the idempotent DDL again).
SCHEMA_VERSION = "pywork jobs v3"
#: Seconds a ``broker.wait`` registration outlives its last use (a wait that timed out).
FINISH_WAITER_TTL = 10.0

_TIMEOUT = int(Status.TIMEOUT)
#: Entries of queries.sql spliced into the others, not statements of their own.
_FRAGMENTS = ("job_columns", "insert_jobs")
#: Driver errors meaning the server cannot be reached (down, restarting, refusing).
#: OSError covers refused connections, socket errors and connect timeouts.
#: What :meth:`PostgresBroker._store_on` takes: an asyncpg connection or a pool's proxy.
_CONNECTIONS = (asyncpg.Connection, PoolConnectionProxy)
_UNREACHABLE = (
    OSError,
    asyncpg.PostgresConnectionError,  # class 08 (but a protocol violation is a bug)
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


def quote_ident(name: str) -> str:
    """Quote `name` as a PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'


@functools.cache
def _raw_queries() -> dict[str, str]:
    return load_queries(__name__, "queries.sql")


def _queries(schema: str) -> dict[str, str]:
    """The statements of queries.sql for the quoted `schema`, fragments spliced in."""
    raw = _raw_queries()
    fragments = {name: raw[name].format(schema=schema) for name in _FRAGMENTS}
    return {
        name: text.format(schema=schema, **fragments)
        for name, text in raw.items()
        if name not in fragments
    }


def _ddl(schema: str) -> str:
    """The script of schema.sql for the quoted `schema`."""
    return read_resource(__name__, "schema.sql").format(schema=schema, version=SCHEMA_VERSION)


def _columns(jobs: Sequence[NewJob]) -> list[tuple[Any, ...]]:
    """The jobs as one tuple per NewJob field: the arrays of a batch INSERT."""
    if not jobs:
        return [()] * len(NewJob._fields)
    return list(zip(*jobs, strict=True))


def _duplicate(exc: asyncpg.UniqueViolationError, jobs: Sequence[NewJob]) -> ValueError:
    """The front's duplicate-id error for a unique violation of the jobs' primary key
    (any other violation is raised again as it is)."""
    if exc.constraint_name != "jobs_pkey" or not jobs:
        raise exc
    detail = exc.detail or str(exc)
    return duplicate_id(next((job.id for job in jobs if job.id in detail), jobs[0].id))


class _Waiter:
    __slots__ = ("future", "queues")

    def __init__(self, queues: frozenset[str]) -> None:
        self.queues = queues
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class _Finish:
    """The registration of ``broker.wait(job_id)`` calls for one job: woken by a
    notification on the finished channel; kept across the front's polls of the job."""

    __slots__ = ("future", "touched")

    def __init__(self) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.touched = time.monotonic()

    def wake(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


def _channel(schema: str, prefix: str = "pywork.") -> str:
    """The NOTIFY channel of `schema` (`prefix` "pywork-done." for finished jobs): an
    identifier, so at most 63 bytes."""
    channel = prefix + schema
    if len(channel.encode()) > 63:
        channel = prefix + hashlib.sha256(schema.encode()).hexdigest()[:40]
    return channel


def _parse_url(url: str) -> tuple[str, str, int]:
    """Split ``?schema=`` and ``?pool_size=`` off `url`: (dsn, schema, pool size)."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"PostgresBroker needs a postgresql:// or postgres:// url, got {url!r}")
    schema = DEFAULT_SCHEMA
    pool_size = DEFAULT_POOL_SIZE
    rest = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "schema":
            schema = value
        elif name == "pool_size":
            try:
                pool_size = int(value)
            except ValueError:
                pool_size = 0
            if pool_size < 1:
                raise ValueError(f"pool_size in the url must be an int >= 1, got {value!r}")
        else:
            rest.append((name, value))
    if not schema or len(schema.encode()) > 63 or "\x00" in schema:
        raise ValueError(
            f"schema in the url must be a PostgreSQL identifier of 1 to 63 bytes, got {schema!r}"
        )
    dsn = urlunsplit(parts._replace(query=urlencode(rest)))
    return dsn, schema, pool_size


def _address(dsn: str) -> str:
    """``host:port`` of `dsn` as asyncpg resolves them (url, ``?host=``, PGHOST…), for
    error messages: never the user or password."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # several hosts, "h1:5432,h2:5433": name them as written
        return parts.netloc.rpartition("@")[2]
    host = query.get("host") or host or os.environ.get("PGHOST") or "localhost"
    if ":" in host and not host.startswith("/"):
        host = f"[{host}]"  # IPv6
    return f"{host}:{query.get('port') or port or os.environ.get('PGPORT') or 5432}"


class PostgresBroker(BrokerFront):
    """A durable broker on PostgreSQL (>= 12) through asyncpg.

    Make it with :meth:`from_url` (or :func:`pywork.connect`): it opens a connection pool
    and creates the schema and tables if they are missing.

    Args:
        url: ``postgresql://…[?schema=NAME][&pool_size=N]`` (see :meth:`from_url`).
        retention: seconds succeeded and cancelled records are kept (0 = not kept).

    Attributes:
        url: the url it was opened with.
        retention: seconds succeeded and cancelled records are kept (0 = not kept).
        schema: the schema holding the ``jobs`` table.

    Raises:
        TypeError, ValueError: not a postgresql:// url, a bad schema, pool_size or retention.
    """

    def __init__(self, url: str, *, retention: float | timedelta = 3600.0) -> None:
        dsn, schema, pool_size = _parse_url(url)
        super().__init__(url, retention=retention)
        self.schema = schema
        self._dsn = dsn
        self._pool_size = pool_size
        self._address = _address(dsn)
        self._pool: asyncpg.Pool | None = None
        self._schema = quote_ident(schema)
        self._channel = _channel(schema)
        self._finished = _channel(schema, "pywork-done.")
        self._sql = _queries(self._schema)
        self._listener: asyncpg.Connection | None = None
        self._listen_lock = asyncio.Lock()
        self._waiters: set[_Waiter] = set()
        self._finishing: dict[str, _Finish] = {}  # job id -> its broker.wait callers
        self._want_finished = False  # LISTEN on the finished channel too (once waited)
        self._finished_on: asyncpg.Connection | None = None  # the listener doing so
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_purge = 0.0

    @classmethod
    async def from_url(cls, url: str, *, retention: float | timedelta = 3600.0) -> PostgresBroker:
        """Connect to ``postgresql://…[?schema=NAME][&pool_size=N]`` and create the tables
        if missing (safe when several processes connect at once).

        Args:
            url: a libpq-style url as asyncpg accepts it, plus ``schema`` (default
                ``pywork``) and ``pool_size`` (default 10), which are not sent to the server.
            retention: seconds the records of succeeded and cancelled jobs are kept.

        Raises:
            ValueError: not a postgresql:// url, a bad schema or pool_size, a bad retention.
            BrokerUnavailable: the server cannot be reached.
            BrokerError: the server refused (authentication, rights, …).
        """
        broker = cls(url, retention=retention)
        await broker.open()
        return broker

    async def twin(self) -> PostgresBroker:
        """A broker on the same schema with a pool of one connection, for the consumer's
        lease-renewal thread (renewals are one statement at a time)."""
        twin = type(self)(self.url, retention=self.retention)
        twin._pool_size = 1
        await twin.open()
        return twin

    def _map_error(self, exc: Exception) -> BrokerError | None:
        if isinstance(exc, _UNREACHABLE) and not isinstance(exc, asyncpg.ProtocolViolationError):
            unreachable = True
        elif isinstance(exc, asyncpg.InterfaceError):  # a connection lost under the pool
            unreachable = "closed" in str(exc) or "closing" in str(exc)
        elif isinstance(exc, asyncpg.PostgresError | asyncpg.InternalClientError):
            unreachable = False
        else:
            return None
        if unreachable:
            return BrokerUnavailable(
                f"cannot reach PostgreSQL at {self._address} ({type(exc).__name__}: {exc})"
            )
        return BrokerError(f"PostgreSQL at {self._address}: {type(exc).__name__}: {exc}")

    @property
    def _db(self) -> asyncpg.Pool:
        pool = self._pool
        if pool is None:
            raise BrokerError(f"{self!r} is not open (await broker.open() first)")
        return pool

    # lifecycle -----------------------------------------------------------------------
    @property
    def pool(self) -> asyncpg.Pool:
        """The broker's asyncpg connection pool (for your own queries next to the jobs).

        Raises:
            BrokerClosed: the broker is not open.
        """
        self._check_open()
        if self._pool is None:
            raise BrokerClosed(f"{self!r} is not open: await broker.open() first")
        return self._pool

    async def _open(self) -> None:
        if self._pool is not None:
            return
        named = "application_name=" in urlsplit(self._dsn).query  # the url's name wins
        pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=self._pool_size,
            server_settings=None if named else {"application_name": "pywork"},
            reset=_keep_session,
        )
        try:
            await self._migrate(pool)
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        """Create the schema, tables and indexes unless they exist (under an advisory lock)."""
        async with pool.acquire() as conn:
            current = await conn.fetchval(self._sql["schema_version"], f"{self._schema}.jobs")
            if current == SCHEMA_VERSION:
                return
            async with conn.transaction():
                await conn.fetchval(self._sql["lock_schema"], f"pywork.{self.schema}")
                await conn.execute(_ddl(self._schema))

    async def _close(self) -> None:
        """Close the LISTEN connection and the pool (waiting up to 10 s for connections in
        use)."""
        self._wake_all()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10.0)
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            try:
                await asyncio.wait_for(listener.close(), 5.0)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                listener.terminate()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 10.0)
            except TimeoutError:
                self._pool.terminate()

    # producer side -------------------------------------------------------------------
    async def _store(self, jobs: list[NewJob]) -> list[str]:
        return await self._insert(self._db, jobs)

    async def _store_on(self, connection: Any, jobs: list[NewJob]) -> list[str]:
        """The statements of :meth:`_store`, sent on the caller's `connection`: inside its
        transaction (if one is open), NOTIFY included, which PostgreSQL delivers at the
        commit and drops on a rollback. A duplicate id fails the statement, and so, as
        any failed statement, aborts that transaction."""
        if not isinstance(connection, _CONNECTIONS):
            raise TypeError(
                "connection must be an asyncpg connection (asyncpg.connect() or "
                f"pool.acquire()), got {connection!r}"
            )
        return await self._insert(connection, jobs)

    async def _insert(self, db: _Db, jobs: list[NewJob]) -> list[str]:
        try:
            if len(jobs) == 1:
                return [await self._insert_one(db, jobs[0])]
            return await self._insert_many(db, jobs)
        except asyncpg.UniqueViolationError as exc:
            raise _duplicate(exc, jobs) from exc

    async def _insert_one(self, db: _Db, job: NewJob) -> str:
        for _ in range(10):
            # NewJob's fields are the statement's parameters, in order
            row = await db.fetchrow(self._sql["enqueue"], *job, self._channel)
            if row is not None:
                job_id: str = row[0]
                return job_id
            holder = await db.fetchrow(self._sql["key_holders"], [job.key])
            if holder is not None:
                held: str = holder["id"]
                return held
            # the holder finished between the two statements: the key is free, try again
        raise RuntimeError(f"could not enqueue {job.id!r}: its key {job.key!r} kept changing hands")

    async def _insert_many(self, db: _Db, jobs: list[NewJob]) -> list[str]:
        rows = await db.fetch(self._sql["enqueue_many"], *_columns(jobs), self._channel)
        ids = [job.id for job in jobs]
        if len(rows) == len(jobs):
            return ids
        stored = {row[0] for row in rows}
        missing = [i for i, job_id in enumerate(ids) if job_id not in stored]
        keys = list({jobs[i].key for i in missing if jobs[i].key is not None})
        holders = {r["key"]: r["id"] for r in await db.fetch(self._sql["key_holders"], keys)}
        for i in missing:
            holder = holders.get(jobs[i].key)
            # a holder that finished in between: store this job on its own
            ids[i] = holder if holder is not None else await self._insert_one(db, jobs[i])
        return ids

    async def _get(self, job_id: str) -> StoredJob | None:
        row = await self._db.fetchrow(self._sql["get"], job_id)
        return None if row is None else StoredJob(*row)

    async def _cancel(self, job_id: str) -> bool:
        row = await self._db.fetchrow(self._sql["cancel"], job_id, self.retention, self._finished)
        return row is not None and bool(row[0])

    async def _stats(self) -> dict[str, QueueStats]:
        counts: dict[str, dict[str, int]] = {}
        for queue, state, n in await self._db.fetch(self._sql["stats"]):
            counts.setdefault(queue, {})[state] = n
        return {queue: QueueStats(**by_state) for queue, by_state in counts.items()}

    async def _dead_letters(self, queue: str | None, limit: int) -> list[StoredJob]:
        rows = await self._db.fetch(self._sql["dead_letters"], queue, limit)
        return [StoredJob(*row) for row in rows]

    async def _retry_dead(self, job_id: str) -> bool:
        pool, query = self._db, self._sql["retry_dead"]
        try:
            rows = await pool.fetch(query, job_id, True, self._channel)
        except asyncpg.UniqueViolationError:  # the key was taken at the same moment
            rows = await pool.fetch(query, job_id, False, self._channel)
        return bool(rows)

    async def _purge_dead(self, queue: str | None) -> int:
        count: int = await self._db.fetchval(self._sql["purge_dead"], queue)
        return count

    # consumer side -------------------------------------------------------------------
    async def _claim(
        self, queues: list[str], limit: int, lease: float, max_retries: int
    ) -> list[Claimed]:
        """One statement; every few seconds the records of succeeded/cancelled jobs past
        their retention are deleted alongside, on another pooled connection."""
        pool = self._db
        token = os.urandom(8).hex()
        claim = pool.fetch(
            self._sql["claim"],
            queues,
            limit,
            max_retries,
            token,
            lease,
            _TIMEOUT,
            *LEASE_EXPIRED,
            self._finished,
        )
        now = time.monotonic()
        if now - self._last_purge >= PURGE_EVERY:
            self._last_purge = now
            rows, _ = await asyncio.gather(
                claim, pool.execute(self._sql["purge_expired"], PURGE_BATCH)
            )
        else:
            rows = await claim
        return [
            Claimed(job_id, token, attempt, payload)
            for job_id, attempt, payload, dead, _ in rows
            if not dead  # died of an expired lease instead (the finished channel was told)
        ]

    async def _wait_for_work(self, queues: list[str], timeout: float) -> None:
        """Sleep on a NOTIFY from the LISTEN connection, bounded by the next due time or
        lease expiry read from the table; never polls."""
        waiter = _Waiter(frozenset(queues))
        self._waiters.add(waiter)
        try:
            # Shielded: cancelling asyncpg while it opens a connection leaks a future, and
            # a cancelled query costs a cancel request; the task is short and owned.
            due = await asyncio.shield(self._spawn(self._next_due(queues)))
            if due is not None and due <= 0:
                return
            delay = timeout if due is None else min(timeout, due)
            if delay <= 0:
                return
            try:
                await asyncio.wait_for(asyncio.shield(waiter.future), delay)
            except TimeoutError:
                pass
        finally:
            self._waiters.discard(waiter)

    async def _next_due(self, queues: list[str]) -> float | None:
        await self._listen()  # before reading the table: no NOTIFY falls in between
        due: float | None = await self._db.fetchval(self._sql["next_due"], queues)
        return due

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run `coro` in a task this broker owns (awaited by :meth:`close`)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its awaiter (if still there) got it too

    async def _listen(self, finished: bool = False) -> None:
        """Open the LISTEN connection unless it is open (again after a server restart);
        with `finished`, listen on the finished channel too, from now on."""
        if finished:
            self._want_finished = True
        listener = self._listener
        if (
            listener is not None
            and not listener.is_closed()
            and (not self._want_finished or self._finished_on is listener)
        ):
            return
        async with self._listen_lock:
            listener = self._listener
            if listener is None or listener.is_closed():
                self._listener = listener = None
                named = "application_name=" in urlsplit(self._dsn).query
                conn = await asyncpg.connect(
                    self._dsn,
                    server_settings=None if named else {"application_name": "pywork-listen"},
                )
                try:
                    await conn.add_listener(self._channel, self._notified)
                except BaseException:
                    conn.terminate()
                    raise
                conn.add_termination_listener(self._listener_lost)
                if self._closed:
                    await conn.close()
                    return
                self._listener = listener = conn
            if self._want_finished and self._finished_on is not listener:
                await listener.add_listener(self._finished, self._notified_finished)
                self._finished_on = listener

    def _notified(self, connection: object, pid: int, channel: str, payload: object) -> None:
        queue = str(payload)
        for waiter in list(self._waiters):
            if queue in waiter.queues:
                waiter.wake()

    def _notified_finished(
        self, connection: object, pid: int, channel: str, payload: object
    ) -> None:
        if not self._finishing:
            return
        if payload == "*":  # too many long ids for one notification: everyone looks
            self._wake_all()
            return
        for job_id in json.loads(str(payload)):
            finish = self._finishing.get(job_id)
            if finish is not None:
                finish.wake()

    def _listener_lost(self, connection: object) -> None:
        # NOTIFYs sent while it is down are lost: wake every waiter so it reads the table
        self._wake_all()

    def _wake_all(self) -> None:
        for waiter in list(self._waiters):
            waiter.wake()
        for finish in list(self._finishing.values()):
            finish.wake()

    async def _wait_for_finish(self, job_id: str, timeout: float) -> None:
        """Sleep until the finished channel names `job_id` (or '*'), the LISTEN
        connection drops, or `timeout` passes.

        The front reads the job, then calls this, again and again: the registration is
        kept from one call to the next, so a notification arriving while the front reads
        is not missed. The first call only registers and LISTENs, then returns at once:
        the front's next read sees any finish that came before.
        """
        finish = self._finishing.get(job_id)
        if finish is None:
            now = time.monotonic()
            for stale_id, stale in list(self._finishing.items()):
                if now - stale.touched > FINISH_WAITER_TTL:  # a wait that ended otherwise
                    del self._finishing[stale_id]
            self._finishing[job_id] = _Finish()
            await asyncio.shield(self._spawn(self._listen(finished=True)))
            return
        finish.touched = time.monotonic()
        if not finish.future.done():
            try:
                await asyncio.wait_for(asyncio.shield(finish.future), timeout)
            except TimeoutError:
                return
        if self._finishing.get(job_id) is finish:
            del self._finishing[job_id]  # woken: the front reads the job, then asks again

    async def _renew(
        self, deliveries: Sequence[Delivery], lease: float, progress: Mapping[str, bytes]
    ) -> dict[str, str]:
        rows = await self._db.fetch(
            self._sql["renew"],
            [d.id for d in deliveries],
            [d.token for d in deliveries],
            lease,
            [progress.get(d.id) for d in deliveries],
        )
        lost: dict[str, str] = {}
        for job_id, state, mine in rows:
            if mine and state == "cancelled":
                lost[job_id] = "cancelled"
            elif not (mine and state == "running"):
                lost[job_id] = "lost"
            # else: changed while we looked (a cancel): the next renewal tells
        return lost

    async def _settle(self, outcomes: Sequence[Outcome]) -> list[bool]:
        batch: list[Outcome] = []
        seen: set[str] = set()
        for outcome in outcomes:
            if outcome.delivery.id not in seen:  # a second outcome for one lease is dropped
                seen.add(outcome.delivery.id)
                batch.append(outcome)
        rows = await self._db.fetch(
            self._sql["settle"],
            [o.delivery.id for o in batch],
            [o.delivery.token for o in batch],
            [o.state.value for o in batch],
            [None if o.status is None else int(o.status) for o in batch],
            [o.error for o in batch],
            [o.retry_in for o in batch],
            self.retention,
            self._channel,
            [o.result for o in batch],
            [o.progress for o in batch],
            self._finished,
        )
        applied = {row[0] for row in rows}
        result: list[bool] = []
        for outcome in outcomes:
            job_id = outcome.delivery.id
            result.append(job_id in applied)
            applied.discard(job_id)  # only the first outcome of an id was applied
        return result

    # cluster schedules (contract §9) -------------------------------------------------
    async def _declare_schedule(
        self, name: str, payload: bytes, spec: ScheduleSpec, first_run: int
    ) -> StoredSchedule:
        row = await self._db.fetchrow(
            self._sql["schedule"],
            name,
            payload,
            spec.every,
            spec.cron,
            spec.timezone,
            spec.jitter,
            spec.misfire,
            first_run,
        )
        assert row is not None  # an upsert always returns its row
        return StoredSchedule(*row)

    async def _unschedule(self, name: str) -> bool:
        status = await self._db.execute(self._sql["unschedule"], name)
        return bool(status == "DELETE 1")

    async def _schedules(self) -> list[StoredSchedule]:
        return [StoredSchedule(*row) for row in await self._db.fetch(self._sql["schedules"])]

    async def _due_schedules(self, at: int) -> tuple[list[StoredSchedule], int | None]:
        rows = await self._db.fetch(self._sql["due_schedules"], at)
        later: int | None = rows[0]["later"] if rows else None
        due = [StoredSchedule(*tuple(row)[1:]) for row in rows if row["name"] is not None]
        return due, later

    async def _fire(
        self, name: str, expected: int, next_run_at: int, last_run_at: int, jobs: list[NewJob]
    ) -> bool:
        """One statement: a conditional UPDATE, then the inserts, as enqueue_many does them
        (a job whose key a live job holds is skipped; a delay is on the database's clock)."""
        try:
            row = await self._db.fetchrow(
                self._sql["fire"],
                *_columns(jobs),
                self._channel,
                name,
                expected,
                next_run_at,
                last_run_at,
            )
        except asyncpg.UniqueViolationError as exc:
            raise _duplicate(exc, jobs) from exc
        assert row is not None  # one row, always
        return bool(row["won"])


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Release a pooled connection as is: the broker leaves no session state behind (no
    LISTEN, session locks, cursors or settings), so asyncpg's default reset query would
    only add a round trip to every call. An open transaction is still rolled back."""
