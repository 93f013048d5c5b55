"""PostgresBroker: a jobs table claimed with ``FOR UPDATE SKIP LOCKED``, woken by LISTEN/NOTIFY.

``postgresql://user:password@host:port/db?schema=NAME&pool_size=N`` (``postgres://`` too).
Jobs live in ``NAME.jobs`` and cluster schedules in ``NAME.schedules`` (schema default
``pywork``, created at connect if missing). Every broker call is one SQL statement, so one
round trip: claiming a batch (ready jobs, due scheduled/failed jobs and expired leases
alike), settling a batch, renewing a batch, enqueueing a batch, firing a schedule's tick
(a conditional UPDATE and the inserts of its jobs). Consumers sleep on a dedicated LISTEN
connection, bounded by the next due time. See ``docs/brokers-postgres.md`` for the design
and the tuning knobs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

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
from pywork.cron import check_schedule_name, declare, from_micros, to_micros
from pywork.encoding import DecodeError, decode_job, encode_for_enqueue, encode_job
from pywork.job import Job
from pywork.status import Status

__all__ = ["PostgresBroker"]

T = TypeVar("T")

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
SCHEMA_VERSION = "pywork jobs v2"

_LIVE = "('queued', 'scheduled', 'running', 'failed')"
_READY = "('queued', 'scheduled', 'failed')"
_STATES = {state.value: state for state in JobState}
_LEASE_EXPIRED = (
    "JobTimeout: lease expired {} times (its consumer stopped renewing it: crashed, "
    "killed or stalled)"
)


def quote_ident(name: str) -> str:
    """Quote `name` as a PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _ddl(schema: str) -> list[str]:
    t = f"{schema}.jobs"
    return [
        f"CREATE SCHEMA IF NOT EXISTS {schema}",
        f"""CREATE TABLE IF NOT EXISTS {t} (
            seq bigint GENERATED ALWAYS AS IDENTITY,
            id text PRIMARY KEY,
            queue text NOT NULL,
            handler text NOT NULL,
            key text,
            max_retries integer,
            payload bytea NOT NULL,
            state text NOT NULL CHECK (state IN
                ('queued', 'scheduled', 'running', 'failed', 'succeeded', 'dead', 'cancelled')),
            status smallint,
            error text,
            attempts integer NOT NULL DEFAULT 0,
            token text,
            run_at timestamptz NOT NULL DEFAULT now(),
            lease_until timestamptz,
            enqueued_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            finished_at timestamptz,
            purge_at timestamptz
        )""",
        # claim: per queue, the ready and due jobs in the order they became ready
        f"CREATE INDEX IF NOT EXISTS jobs_ready ON {t} (queue, run_at, seq) "
        f"WHERE state IN {_READY}",
        # claim (expired leases) and wait (next lease expiry)
        f"CREATE INDEX IF NOT EXISTS jobs_leases ON {t} (queue, lease_until) "
        "WHERE state = 'running'",
        # unique jobs: one live job per key
        f"CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON {t} (key) "
        f"WHERE key IS NOT NULL AND state IN {_LIVE}",
        # lazy deletion of succeeded/cancelled records after the retention
        f"CREATE INDEX IF NOT EXISTS jobs_purge ON {t} (purge_at) WHERE purge_at IS NOT NULL",
        f"CREATE INDEX IF NOT EXISTS jobs_dead ON {t} (finished_at, seq) WHERE state = 'dead'",
        # cluster schedules (v2); times are integer microseconds since the epoch, so the
        # compare-and-set of fire() is exact
        f"""CREATE TABLE IF NOT EXISTS {schema}.schedules (
            name text PRIMARY KEY,
            job bytea NOT NULL,
            every float8 CHECK (every > 0),
            cron text,
            timezone text NOT NULL,
            jitter float8 NOT NULL DEFAULT 0 CHECK (jitter >= 0),
            misfire text NOT NULL CHECK (misfire IN ('skip', 'all')),
            next_run_at bigint NOT NULL,
            last_run_at bigint,
            CHECK ((every IS NULL) <> (cron IS NULL))
        )""",
        f"CREATE INDEX IF NOT EXISTS schedules_next ON {schema}.schedules (next_run_at)",
        f"COMMENT ON TABLE {t} IS '{SCHEMA_VERSION}'",
    ]


def _insert_jobs(t: str, guard: str = "") -> str:
    """The INSERT of a batch of jobs, shared by enqueue_many and fire.

    Its rows come from ``unnest()`` of $1..$7 (id, queue, handler, key, max_retries,
    payload, delay in seconds: NULL or 0 = queued now, else scheduled); `guard` is an
    extra WHERE condition. A job whose key a live job holds is skipped (ON CONFLICT DO
    NOTHING); it returns the stored rows' id and queue.
    """
    return f"""
        INSERT INTO {t} (id, queue, handler, key, max_retries, payload, state, run_at)
        SELECT u.id, u.queue, u.handler, u.key, u.max_retries, u.payload,
               CASE WHEN u.delay > 0 THEN 'scheduled' ELSE 'queued' END,
               now() + coalesce(u.delay, 0) * interval '1 second'
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[],
                    $6::bytea[], $7::float8[]) WITH ORDINALITY
             AS u(id, queue, handler, key, max_retries, payload, delay, n)
        {guard}
        ORDER BY u.n
        ON CONFLICT (key) WHERE key IS NOT NULL AND state IN {_LIVE} DO NOTHING
        RETURNING id, queue"""


class _SQL:
    """The statements of one schema, built once."""

    def __init__(self, schema: str) -> None:
        t = f"{schema}.jobs"
        visible = "(purge_at IS NULL OR purge_at > now())"
        columns = (
            "id, handler, queue, payload, state, status, attempts, error, enqueued_at, "
            "started_at, finished_at, key, run_at"
        )
        self.columns = columns
        self.enqueue = f"""
            WITH ins AS (
                INSERT INTO {t} (id, queue, handler, key, max_retries, payload, state, run_at)
                SELECT $1, $2, $3, $4, $5, $6,
                       CASE WHEN s.at > now() THEN 'scheduled' ELSE 'queued' END,
                       greatest(s.at, now())
                FROM (SELECT coalesce($7::timestamptz,
                                      now() + coalesce($8::float8, 0) * interval '1 second')
                             AS at) s
                ON CONFLICT (key) WHERE key IS NOT NULL AND state IN {_LIVE} DO NOTHING
                RETURNING id, queue
            )
            SELECT id, pg_notify($9, queue)::text AS notified FROM ins"""
        self.enqueue_many = f"""
            WITH ins AS ({_insert_jobs(t)})
            SELECT id, (SELECT count(pg_notify($8, q.queue))
                        FROM (SELECT DISTINCT queue FROM ins) q) AS notified
            FROM ins"""
        self.key_holders = f"SELECT key, id FROM {t} WHERE key = ANY($1) AND state IN {_LIVE}"
        self.get = f"SELECT {columns} FROM {t} WHERE id = $1 AND {visible}"
        self.cancel = f"""
            WITH gone AS (
                DELETE FROM {t}
                WHERE id = $1 AND state IN {_READY} AND $2::float8 = 0
                RETURNING id
            ), upd AS (
                UPDATE {t} SET
                    state = 'cancelled', finished_at = now(),
                    purge_at = CASE WHEN state = 'running'
                        THEN greatest(now() + $2 * interval '1 second', lease_until)
                        ELSE now() + $2 * interval '1 second' END
                WHERE id = $1 AND state IN {_LIVE} AND NOT ($2::float8 = 0 AND state <> 'running')
                RETURNING id
            )
            SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM upd)"""
        self.stats = f"""
            SELECT queue,
                   CASE WHEN state IN ('scheduled', 'failed') AND run_at <= now()
                        THEN 'queued' ELSE state END AS st,
                   count(*) AS n
            FROM {t} WHERE {visible} GROUP BY 1, 2"""
        self.dead_letters = f"""
            SELECT {columns} FROM {t}
            WHERE state = 'dead' AND ($1::text IS NULL OR queue = $1)
            ORDER BY finished_at, seq LIMIT $2"""
        self.retry_dead = f"""
            UPDATE {t} j SET
                state = 'queued', attempts = 0, status = NULL, error = NULL, token = NULL,
                lease_until = NULL, started_at = NULL, finished_at = NULL, run_at = now(),
                key = CASE WHEN $2 AND NOT EXISTS (
                    SELECT 1 FROM {t} o WHERE o.key = j.key AND o.state IN {_LIVE}
                ) THEN j.key END
            WHERE j.id = $1 AND j.state = 'dead'
            RETURNING pg_notify($3, j.queue)::text"""
        self.purge_dead = f"""
            WITH d AS (
                DELETE FROM {t} WHERE state = 'dead' AND ($1::text IS NULL OR queue = $1)
                RETURNING 1
            ) SELECT count(*) FROM d"""
        self.purge_expired = f"""
            DELETE FROM {t} WHERE id IN (
                SELECT id FROM {t} WHERE purge_at <= now()
                LIMIT {PURGE_BATCH} FOR UPDATE SKIP LOCKED)"""
        # Expired leases come first, then ready jobs in the order they became ready. An
        # expired lease over its retries dies (TIMEOUT) instead of being claimed again.
        self.claim = f"""
            WITH q AS (SELECT DISTINCT unnest($1::text[]) AS queue),
            expired AS MATERIALIZED (
                SELECT x.id, x.lease_until, x.attempts > coalesce(x.max_retries, $3) AS dead
                FROM q, LATERAL (
                    SELECT j.id, j.lease_until, j.attempts, j.max_retries FROM {t} j
                    WHERE j.queue = q.queue AND j.state = 'running' AND j.lease_until <= now()
                    ORDER BY j.lease_until LIMIT $2
                    FOR UPDATE SKIP LOCKED
                ) x
            ),
            ready AS MATERIALIZED (
                SELECT x.id, x.run_at, x.seq
                FROM q, LATERAL (
                    SELECT j.id, j.run_at, j.seq FROM {t} j
                    WHERE j.queue = q.queue AND j.state IN {_READY} AND j.run_at <= now()
                    ORDER BY j.run_at, j.seq LIMIT $2
                    FOR UPDATE SKIP LOCKED
                ) x
            ),
            picked AS (
                SELECT id, dead, n FROM (
                    SELECT id, dead, row_number() OVER (ORDER BY lease_until) AS n FROM expired
                    UNION ALL
                    SELECT id, false, 1000000 + row_number() OVER (ORDER BY run_at, seq)
                    FROM ready
                ) a ORDER BY n LIMIT $2
            )
            UPDATE {t} j SET
                state = CASE WHEN p.dead THEN 'dead' ELSE 'running' END,
                attempts = j.attempts + CASE WHEN p.dead THEN 0 ELSE 1 END,
                token = CASE WHEN p.dead THEN NULL ELSE $4 END,
                lease_until = CASE WHEN p.dead THEN NULL
                                   ELSE now() + $5 * interval '1 second' END,
                started_at = CASE WHEN p.dead THEN j.started_at ELSE now() END,
                finished_at = CASE WHEN p.dead THEN now() ELSE NULL END,
                status = CASE WHEN p.dead THEN $6::smallint ELSE j.status END,
                error = CASE WHEN p.dead THEN replace($7, '{{}}', j.attempts::text)
                             ELSE j.error END
            FROM picked p
            WHERE j.id = p.id
            RETURNING j.id, j.attempts, j.payload, p.dead, p.n"""
        self.renew = f"""
            WITH r AS (
                SELECT * FROM unnest($1::text[], $2::text[]) AS r(id, token)
            ), upd AS (
                UPDATE {t} j SET lease_until = now() + $3 * interval '1 second'
                FROM r
                WHERE j.id = r.id AND j.token = r.token AND j.state = 'running'
                RETURNING j.id, j.token
            )
            SELECT r.id, j.state, j.token IS NOT DISTINCT FROM r.token AS mine
            FROM r LEFT JOIN {t} j ON j.id = r.id
            WHERE NOT EXISTS (SELECT 1 FROM upd WHERE upd.id = r.id AND upd.token = r.token)"""
        self.settle = f"""
            WITH o AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::smallint[],
                                     $5::text[], $6::float8[])
                    AS o(id, token, state, status, error, retry_in)
            ), gone AS (
                DELETE FROM {t} j USING o
                WHERE $7::float8 = 0 AND o.state = 'succeeded'
                  AND j.id = o.id AND j.token = o.token AND j.state = 'running'
                RETURNING j.id
            ), done AS (
                UPDATE {t} j SET
                    state = o.state,
                    status = CASE WHEN o.state = 'queued' THEN j.status ELSE o.status END,
                    error = CASE WHEN o.state = 'queued' THEN j.error ELSE o.error END,
                    attempts = CASE WHEN o.state = 'queued' THEN greatest(j.attempts - 1, 0)
                                    ELSE j.attempts END,
                    token = NULL,
                    lease_until = NULL,
                    run_at = CASE o.state
                        WHEN 'failed' THEN now() + coalesce(o.retry_in, 0) * interval '1 second'
                        WHEN 'queued' THEN now()
                        ELSE j.run_at END,
                    finished_at = CASE WHEN o.state IN ('succeeded', 'dead') THEN now()
                                       ELSE j.finished_at END,
                    purge_at = CASE WHEN o.state = 'succeeded'
                                    THEN now() + $7 * interval '1 second' END
                FROM o
                WHERE NOT ($7::float8 = 0 AND o.state = 'succeeded')
                  AND j.id = o.id AND j.token = o.token AND j.state = 'running'
                RETURNING j.id, j.queue, o.state
            )
            SELECT id, (SELECT count(pg_notify($8, w.queue)) FROM
                        (SELECT DISTINCT queue FROM done
                         WHERE state IN ('failed', 'queued')) w) AS notified
            FROM (SELECT id FROM gone UNION ALL SELECT id FROM done) a"""
        # seconds until the next job of the queues is due or the next lease expires
        self.next_due = f"""
            WITH q AS (SELECT DISTINCT unnest($1::text[]) AS queue)
            SELECT extract(epoch FROM least(
                (SELECT min(x.run_at) FROM q, LATERAL (
                    SELECT j.run_at FROM {t} j
                    WHERE j.queue = q.queue AND j.state IN {_READY}
                    ORDER BY j.run_at LIMIT 1) x),
                (SELECT min(x.lease_until) FROM q, LATERAL (
                    SELECT j.lease_until FROM {t} j
                    WHERE j.queue = q.queue AND j.state = 'running'
                    ORDER BY j.lease_until LIMIT 1) x)
            ) - now())::float8"""
        # cluster schedules (contract §9): next_run_at/last_run_at in microseconds
        st = f"{schema}.schedules"
        self.schedule_columns = (
            "name, job, every, cron, timezone, jitter, misfire, next_run_at, last_run_at"
        )
        # redeclaring with the same every/cron/timezone keeps next_run_at (and always
        # last_run_at); the row lock of ON CONFLICT makes concurrent declarations safe
        self.schedule = f"""
            INSERT INTO {st} AS s (name, job, every, cron, timezone, jitter, misfire, next_run_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (name) DO UPDATE SET
                job = excluded.job, every = excluded.every, cron = excluded.cron,
                timezone = excluded.timezone, jitter = excluded.jitter,
                misfire = excluded.misfire,
                next_run_at = CASE
                    WHEN s.every IS NOT DISTINCT FROM excluded.every
                     AND s.cron IS NOT DISTINCT FROM excluded.cron
                     AND s.timezone = excluded.timezone
                    THEN s.next_run_at ELSE excluded.next_run_at END
            RETURNING {self.schedule_columns}"""
        self.unschedule = f"DELETE FROM {st} WHERE name = $1"
        self.schedules = f"SELECT {self.schedule_columns} FROM {st} ORDER BY name"
        # the due schedules and the earliest next run of the others, in one statement:
        # always one row at least (a due-less row carries only `later`)
        self.due_schedules = f"""
            SELECT d.*, l.later
            FROM (SELECT min(next_run_at) AS later FROM {st} WHERE next_run_at > $1) l
            LEFT JOIN (SELECT {self.schedule_columns} FROM {st} WHERE next_run_at <= $1) d
                ON true
            ORDER BY d.next_run_at, d.name"""
        # the compare-and-set on next_run_at and, only if it matched, the inserts of the
        # tick's jobs: one statement, so one transaction. A concurrent fire of the same
        # tick waits for the row lock, re-reads next_run_at, matches nothing, inserts nothing.
        self.fire = f"""
            WITH won AS (
                UPDATE {st} SET next_run_at = $11, last_run_at = $12
                WHERE name = $9 AND next_run_at = $10
                RETURNING name
            ), ins AS ({_insert_jobs(t, "WHERE EXISTS (SELECT 1 FROM won)")})
            SELECT (SELECT count(*) FROM won) AS won,
                   (SELECT count(pg_notify($8, q.queue))
                    FROM (SELECT DISTINCT queue FROM ins) q) AS notified"""


class _Waiter:
    __slots__ = ("future", "queues")

    def __init__(self, queues: frozenset[str]) -> None:
        self.queues = queues
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


def _channel(schema: str) -> str:
    """The NOTIFY channel of `schema`: an identifier, so at most 63 bytes."""
    channel = f"pywork.{schema}"
    if len(channel.encode()) > 63:
        channel = "pywork." + hashlib.sha256(schema.encode()).hexdigest()[:40]
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


class PostgresBroker:
    """A durable broker on PostgreSQL (>= 12) through asyncpg.

    Make it with :meth:`from_url` (or :func:`pywork.connect`): it opens a connection pool
    and creates the schema and table if they are missing.

    Attributes:
        url: the url it was opened with.
        retention: seconds succeeded and cancelled records are kept (0 = not kept).
        schema: the schema holding the ``jobs`` table.
    """

    def __init__(
        self, url: str, pool: asyncpg.Pool, dsn: str, schema: str, *, retention: float
    ) -> None:
        self.url = url
        self.retention = retention
        self.schema = schema
        self._dsn = dsn
        self._pool = pool
        self._schema = quote_ident(schema)
        self._channel = _channel(schema)
        self._sql = _SQL(self._schema)
        self._listener: asyncpg.Connection | None = None
        self._listen_lock = asyncio.Lock()
        self._waiters: set[_Waiter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_purge = 0.0
        self._closed = False

    @classmethod
    async def from_url(cls, url: str, *, retention: float | timedelta = 3600.0) -> PostgresBroker:
        """Connect to ``postgresql://…[?schema=NAME][&pool_size=N]`` and create the table if
        missing (safe when several processes connect at once).

        Args:
            url: a libpq-style url as asyncpg accepts it, plus ``schema`` (default
                ``pywork``) and ``pool_size`` (default 10), which are not sent to the server.
            retention: seconds the records of succeeded and cancelled jobs are kept.

        Raises:
            ValueError: not a postgresql:// url, a bad schema or pool_size, a bad retention.
            OSError, asyncpg.PostgresError: the server cannot be reached or refused.
        """
        seconds = duration(retention, "retention")
        dsn, schema, pool_size = _parse_url(url)
        named = "application_name=" in urlsplit(dsn).query  # the url's name wins
        pool = await asyncpg.create_pool(
            dsn,
            min_size=0,
            max_size=pool_size,
            server_settings=None if named else {"application_name": "pywork"},
            reset=_keep_session,
        )
        broker = cls(url, pool, dsn, schema, retention=seconds)
        try:
            await broker._migrate()
        except BaseException:
            await pool.close()
            raise
        return broker

    async def _migrate(self) -> None:
        """Create the schema, table and indexes unless they exist (under an advisory lock)."""
        table = f"{self._schema}.jobs"
        async with self._pool.acquire() as conn:
            current = await conn.fetchval(
                "SELECT obj_description(to_regclass($1), 'pg_class')", table
            )
            if current == SCHEMA_VERSION:
                return
            async with conn.transaction():
                await conn.execute("SET LOCAL client_min_messages = warning")
                await conn.fetchval(
                    "SELECT pg_advisory_xact_lock(hashtext($1))", f"pywork.{self.schema}"
                )
                for statement in _ddl(self._schema):
                    await conn.execute(statement)

    def __repr__(self) -> str:
        from pywork.brokers import mask_url

        return f"<PostgresBroker {mask_url(self.url)!r} schema={self.schema!r}>"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    # producer side --------------------------------------------------------------

    async def enqueue(
        self, job: Job, *, at: datetime | None = None, delay: float | timedelta | None = None
    ) -> str:
        """Store `job` (durable once this returns) and return its id.

        If `job.key` is set and a queued, scheduled, running or failed job holds that key,
        nothing is stored and that job's id is returned.

        Args:
            job: the job to store.
            at: run it at this time (naive = local time); a past time means at once.
                Exclusive with `delay`.
            delay: run it after this many seconds (measured on the database's clock).

        Raises:
            SerializationError: args or headers cannot be encoded (nothing is stored).
            ValueError: both `at` and `delay`, a negative delay, or a duplicate job id.
            TypeError: `job` is not a Job or `at` not a datetime.
        """
        if at is not None and delay is not None:
            raise ValueError("pass either at= or delay=, not both")
        if at is not None and not isinstance(at, datetime):
            raise TypeError(f"at must be a datetime.datetime, got {at!r}")
        seconds = optional_duration(delay, "delay")
        when = None if at is None else at.astimezone(UTC)  # naive: local time
        payload = encode_for_enqueue(job)
        self._check_open()
        for _ in range(10):
            try:
                row = await self._pool.fetchrow(
                    self._sql.enqueue,
                    job.id,
                    job.queue,
                    job.handler,
                    job.key,
                    job.max_retries,
                    payload,
                    when,
                    seconds,
                    self._channel,
                )
            except asyncpg.UniqueViolationError as exc:
                raise ValueError(f"a job with id {job.id!r} is already stored") from exc
            if row is not None:
                job_id: str = row["id"]
                return job_id
            holder = await self._pool.fetchrow(self._sql.key_holders, [job.key])
            if holder is not None:
                held: str = holder["id"]
                return held
            # the holder finished between the two statements: the key is free, try again
        raise RuntimeError(f"could not enqueue {job.id!r}: its key {job.key!r} kept changing hands")

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """Store `jobs` in one statement, all or nothing (each is encoded before any is
        stored); returns their ids (a job whose key is held gives the holder's id).

        Raises:
            SerializationError: a job cannot be encoded (nothing is stored).
            ValueError: the same id twice, or an id already stored (nothing is stored).
        """
        if isinstance(jobs, Job) or not isinstance(jobs, Sequence):
            raise TypeError(f"jobs must be a sequence of pywork.Job, got {jobs!r}")
        payloads = [encode_for_enqueue(job) for job in jobs]
        ids = [job.id for job in jobs]
        if len(set(ids)) != len(ids):
            raise ValueError("enqueue_many got the same job id twice")
        if not jobs:
            return []
        self._check_open()
        try:
            rows = await self._pool.fetch(
                self._sql.enqueue_many,
                ids,
                [job.queue for job in jobs],
                [job.handler for job in jobs],
                [job.key for job in jobs],
                [job.max_retries for job in jobs],
                payloads,
                None,  # no delays: every job is queued now
                self._channel,
            )
        except asyncpg.UniqueViolationError as exc:
            raise ValueError(f"a job id of the batch is already stored ({exc})") from exc
        stored = {row["id"] for row in rows}
        result = list(ids)
        missing = [i for i, job_id in enumerate(ids) if job_id not in stored]
        if missing:
            keys = list({jobs[i].key for i in missing if jobs[i].key is not None})
            holders = {
                r["key"]: r["id"] for r in await self._pool.fetch(self._sql.key_holders, keys)
            }
            for i in missing:
                holder = holders.get(jobs[i].key)
                # a holder that finished in between: store this job on its own
                result[i] = holder if holder is not None else await self.enqueue(jobs[i])
        return result

    def _record(self, row: asyncpg.Record) -> JobRecord:
        try:
            args = decode_job(row["payload"]).args
        except DecodeError:
            args = {}
        state = _STATES[row["state"]]
        run_at: datetime | None = row["run_at"]
        timed = state in (JobState.SCHEDULED, JobState.FAILED)
        if timed and run_at is not None and run_at <= datetime.now(UTC):
            state = JobState.QUEUED  # due: ready for the next claim
        status = row["status"]
        return JobRecord(
            id=row["id"],
            handler=row["handler"],
            queue=row["queue"],
            args=args,
            state=state,
            status=None if status is None else Status(status),
            attempts=row["attempts"],
            error=row["error"],
            enqueued_at=row["enqueued_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            key=row["key"],
            run_at=run_at if state in (JobState.SCHEDULED, JobState.FAILED) else None,
        )

    async def get(self, job_id: str) -> JobRecord | None:
        """The record of `job_id`, or None (unknown, or no longer kept)."""
        if not isinstance(job_id, str):
            raise TypeError(f"job_id must be a str, got {job_id!r}")
        self._check_open()
        row = await self._pool.fetchrow(self._sql.get, job_id)
        return None if row is None else self._record(row)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued, scheduled, failed or running job; True if this call did it.

        A running job's consumer learns of it on its next lease renewal and cancels the run.
        """
        if not isinstance(job_id, str):
            raise TypeError(f"job_id must be a str, got {job_id!r}")
        self._check_open()
        count = await self._pool.fetchval(self._sql.cancel, job_id, self.retention)
        return bool(count)

    async def stats(self) -> dict[str, QueueStats]:
        """Per-queue counts of jobs in each state (due scheduled/failed jobs count as queued)."""
        self._check_open()
        counts: dict[str, dict[str, int]] = {}
        for row in await self._pool.fetch(self._sql.stats):
            counts.setdefault(row["queue"], {})[row["st"]] = row["n"]
        return {queue: QueueStats(**by_state) for queue, by_state in counts.items()}

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[JobRecord]:
        """Dead jobs (of `queue`, or all), oldest death first, at most `limit`."""
        if queue is not None and not isinstance(queue, str):
            raise TypeError(f"queue must be a str or None, got {queue!r}")
        limit = positive_int(limit, "limit")
        self._check_open()
        rows = await self._pool.fetch(self._sql.dead_letters, queue, limit)
        return [self._record(row) for row in rows]

    async def retry_dead(self, job_id: str) -> bool:
        """Queue a dead job again with attempts 0; True if it was dead.

        If another live job took its key meanwhile, the retried job loses its key.
        """
        if not isinstance(job_id, str):
            raise TypeError(f"job_id must be a str, got {job_id!r}")
        self._check_open()
        try:
            rows = await self._pool.fetch(self._sql.retry_dead, job_id, True, self._channel)
        except asyncpg.UniqueViolationError:  # the key was taken at the same moment
            rows = await self._pool.fetch(self._sql.retry_dead, job_id, False, self._channel)
        return bool(rows)

    async def purge_dead(self, queue: str | None = None) -> int:
        """Delete dead jobs (of `queue`, or all); return how many."""
        if queue is not None and not isinstance(queue, str):
            raise TypeError(f"queue must be a str or None, got {queue!r}")
        self._check_open()
        count: int = await self._pool.fetchval(self._sql.purge_dead, queue)
        return count

    async def close(self) -> None:
        """Close the LISTEN connection and the pool (waiting up to 10 s for connections in
        use). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for waiter in list(self._waiters):
            waiter.wake()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10.0)
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            try:
                await asyncio.wait_for(listener.close(), 5.0)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                listener.terminate()
        try:
            await asyncio.wait_for(self._pool.close(), 10.0)
        except TimeoutError:
            self._pool.terminate()

    # consumer side --------------------------------------------------------------
    async def claim(
        self, queues: Sequence[str], limit: int, *, lease: float, max_retries: int
    ) -> list[Delivery]:
        """Lease up to `limit` ready jobs of `queues` for `lease` seconds, oldest first, in
        one statement (see :class:`~pywork.brokers.base.Broker`).

        Expired leases are taken back first: claimed again (attempt + 1), or dead with
        TIMEOUT once their attempts exceed their max_retries. Every few seconds the records
        of succeeded/cancelled jobs past their retention are deleted alongside.
        """
        queue_list = _queues(queues)
        limit = positive_int(limit, "limit")
        seconds = duration(lease, "lease", allow_zero=False)
        max_retries = positive_int(max_retries, "max_retries", minimum=0)
        self._check_open()
        token = os.urandom(8).hex()
        claim = self._pool.fetch(
            self._sql.claim,
            queue_list,
            limit,
            max_retries,
            token,
            seconds,
            int(Status.TIMEOUT),
            _LEASE_EXPIRED,
        )
        now = time.monotonic()
        if now - self._last_purge >= PURGE_EVERY:
            self._last_purge = now
            rows, _ = await asyncio.gather(claim, self._pool.execute(self._sql.purge_expired))
        else:
            rows = await claim
        rows = sorted(rows, key=lambda row: row["n"])
        deliveries: list[Delivery] = []
        for row in rows:
            if row["dead"]:
                continue
            try:
                job: Job | None = decode_job(row["payload"])
                error = None
            except DecodeError as exc:
                job, error = None, f"{type(exc).__name__}: {exc}"
            deliveries.append(Delivery(row["id"], token, row["attempts"], job, error))
        return deliveries

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a job of `queues` may be ready (new, due or expired), or after
        `timeout` seconds, whichever is first.

        It sleeps on a NOTIFY from the LISTEN connection, bounded by the next due time
        or lease expiry read from the table; it never polls.

        Raises:
            OSError, asyncpg errors: the server cannot be reached (the caller retries).
        """
        queue_list = _queues(queues)
        seconds = duration(timeout, "timeout")
        self._check_open()
        waiter = _Waiter(frozenset(queue_list))
        self._waiters.add(waiter)
        try:
            # Shielded: cancelling asyncpg while it opens a connection leaks a future, and
            # a cancelled query costs a cancel request; the task is short and owned.
            due = await asyncio.shield(self._spawn(self._next_due(queue_list)))
            if due is not None and due <= 0:
                return
            delay = seconds if due is None else min(seconds, due)
            if delay <= 0:
                return
            try:
                await asyncio.wait_for(asyncio.shield(waiter.future), delay)
            except TimeoutError:
                pass
        finally:
            self._waiters.discard(waiter)

    wait_for_work = wait  # (until this backend moves onto the BrokerFront)

    async def _next_due(self, queues: list[str]) -> float | None:
        await self._listen()  # before reading the table: no NOTIFY falls in between
        due: float | None = await self._pool.fetchval(self._sql.next_due, queues)
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

    async def _listen(self) -> None:
        """Open the LISTEN connection unless it is open (again after a server restart)."""
        if self._listener is not None and not self._listener.is_closed():
            return
        async with self._listen_lock:
            if self._listener is not None and not self._listener.is_closed():
                return
            self._listener = None
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
            self._listener = conn

    def _notified(self, connection: object, pid: int, channel: str, payload: object) -> None:
        queue = str(payload)
        for waiter in list(self._waiters):
            if queue in waiter.queues:
                waiter.wake()

    def _listener_lost(self, connection: object) -> None:
        # NOTIFYs sent while it is down are lost: wake every waiter so it reads the table
        for waiter in list(self._waiters):
            waiter.wake()

    async def renew(self, deliveries: Sequence[Delivery], *, lease: float) -> dict[str, str]:
        """Extend the leases still held, in one statement; ``{id: "cancelled" | "lost"}``
        for the others."""
        seconds = duration(lease, "lease", allow_zero=False)
        if not deliveries:
            return {}
        self._check_open()
        rows = await self._pool.fetch(
            self._sql.renew,
            [d.id for d in deliveries],
            [d.token for d in deliveries],
            seconds,
        )
        lost: dict[str, str] = {}
        for row in rows:
            state, mine = row["state"], row["mine"]
            if mine and state == "cancelled":
                lost[row["id"]] = "cancelled"
            elif mine and state == "running":
                continue  # changed while we looked (a cancel): the next renewal tells
            else:
                lost[row["id"]] = "lost"
        return lost

    async def settle(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Apply outcomes in one statement, each fenced by its token; per outcome, whether
        it was applied (False: the lease was lost or the job was cancelled)."""
        batch: list[Outcome] = []
        seen: set[str] = set()
        for outcome in outcomes:
            state = outcome.state
            if state not in (JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD, JobState.QUEUED):
                raise ValueError(
                    f"cannot settle a job as {state!r}; use succeeded, failed, dead or queued"
                )
            if outcome.delivery.id not in seen:  # a second outcome for one lease is dropped
                seen.add(outcome.delivery.id)
                batch.append(outcome)
        if not batch:
            return [False] * len(outcomes)
        self._check_open()
        rows = await self._pool.fetch(
            self._sql.settle,
            [o.delivery.id for o in batch],
            [o.delivery.token for o in batch],
            [o.state.value for o in batch],
            [None if o.status is None else int(o.status) for o in batch],
            [o.error for o in batch],
            [o.retry_in for o in batch],
            self.retention,
            self._channel,
        )
        applied = {row["id"] for row in rows}
        result: list[bool] = []
        for outcome in outcomes:
            job_id = outcome.delivery.id
            result.append(job_id in applied)
            applied.discard(job_id)  # only the first outcome of an id was applied
        return result

    # cluster schedules (contract §9) ------------------------------------------------
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
        self._check_open()
        first_run = to_micros(spec.first_run(cronlib.now()))
        row = await self._pool.fetchrow(
            self._sql.schedule,
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
        return _schedule_record(row)

    async def unschedule(self, name: str) -> bool:
        """Delete the schedule `name`; True if it existed."""
        check_schedule_name(name)
        self._check_open()
        status = await self._pool.execute(self._sql.unschedule, name)
        return bool(status == "DELETE 1")

    async def schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by name."""
        self._check_open()
        return [_schedule_record(row) for row in await self._pool.fetch(self._sql.schedules)]

    async def due_schedules(self, at: datetime) -> tuple[list[ScheduleRecord], datetime | None]:
        """The schedules whose next run is at or before `at` (oldest first), and the
        earliest next run of the others (None when there are none), in one statement."""
        limit = to_micros(_aware(at, "at"))
        self._check_open()
        rows = await self._pool.fetch(self._sql.due_schedules, limit)
        later = rows[0]["later"] if rows else None
        due = [_schedule_record(row) for row in rows if row["name"] is not None]
        return due, None if later is None else from_micros(later)

    async def fire(
        self,
        name: str,
        expected: datetime,
        next_run_at: datetime,
        last_run_at: datetime,
        jobs: Sequence[tuple[Job, float | None]],
    ) -> bool:
        """If `name` still runs next at `expected`, move it on and enqueue `jobs`, in one
        statement (a conditional UPDATE, then the inserts, as enqueue_many does them).

        A job whose key a queued, scheduled, running or failed job holds is skipped; a job
        with a delay is stored as scheduled, due after that many seconds (database clock).
        Consumers of the jobs' queues are woken by a NOTIFY.

        Args:
            name: the schedule.
            expected: the next run time this consumer read (compared to the microsecond).
            next_run_at: the new next run time.
            last_run_at: the latest tick fired.
            jobs: the ticks' jobs, each with its delay in seconds or None.

        Returns:
            True if this call won the compare-and-set (and stored the jobs); False
            (nothing changed) if another consumer fired it first or it was removed.

        Raises:
            SerializationError: a job cannot be encoded (nothing changed).
            ValueError: a job id is already stored (nothing changed).
        """
        check_schedule_name(name)
        expected_us = to_micros(_aware(expected, "expected"))
        next_us = to_micros(_aware(next_run_at, "next_run_at"))
        last_us = to_micros(_aware(last_run_at, "last_run_at"))
        if isinstance(jobs, str | bytes) or not isinstance(jobs, Sequence):
            raise TypeError(f"jobs must be a sequence of (Job, delay) pairs, got {jobs!r}")
        batch: list[Job] = []
        delays: list[float | None] = []
        for pair in jobs:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], Job)):
                raise TypeError(f"jobs must hold (Job, delay seconds or None) pairs, got {pair!r}")
            batch.append(pair[0])
            delays.append(optional_duration(pair[1], "delay"))
        payloads = [encode_job(job) for job in batch]  # the declared headers, as they are
        self._check_open()
        try:
            row = await self._pool.fetchrow(
                self._sql.fire,
                [job.id for job in batch],
                [job.queue for job in batch],
                [job.handler for job in batch],
                [job.key for job in batch],
                [job.max_retries for job in batch],
                payloads,
                delays,
                self._channel,
                name,
                expected_us,
                next_us,
                last_us,
            )
        except asyncpg.UniqueViolationError as exc:
            raise ValueError(f"a job id of schedule {name!r} is already stored ({exc})") from exc
        assert row is not None  # one row, always
        return bool(row["won"])


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Release a pooled connection as is: the broker leaves no session state behind (no
    LISTEN, session locks, cursors or settings), so asyncpg's default reset query would
    only add a round trip to every call. An open transaction is still rolled back."""


def _check_schedule_name(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"schedule name must be a str, got {name!r}")
    if not name:
        raise ValueError("schedule name must be a non-empty str")


def _aware(moment: object, name: str) -> datetime:
    if not isinstance(moment, datetime):
        raise TypeError(f"{name} must be an aware datetime.datetime, got {moment!r}")
    if moment.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime (with a tzinfo), got {moment!r}")
    return moment


def _schedule_record(row: asyncpg.Record) -> ScheduleRecord:
    last: int | None = row["last_run_at"]
    return ScheduleRecord(
        name=row["name"],
        job=decode_job(row["job"]),
        every=row["every"],
        cron=row["cron"],
        timezone=row["timezone"],
        next_run_at=from_micros(row["next_run_at"]),
        last_run_at=None if last is None else from_micros(last),
        jitter=row["jitter"],
        misfire=row["misfire"],
    )


def _queues(queues: Sequence[str]) -> list[str]:
    if isinstance(queues, str | bytes) or not isinstance(queues, Sequence):
        raise TypeError(f"queues must be a sequence of queue names, got {queues!r}")
    if not queues or not all(isinstance(q, str) and q for q in queues):
        raise ValueError(f"queues must hold at least one non-empty str, got {queues!r}")
    return list(queues)
