-- The statements of PostgresBroker, one per broker call (one round trip each).
--
-- {schema} is the quoted schema identifier. Two entries are fragments, not statements,
-- spliced into others where their name appears in braces: {job_columns} (a job row as
-- StoredJob wants it) and {insert_jobs} (the INSERT shared by enqueue, enqueue_many and
-- fire). Live states are ('queued', 'scheduled', 'running', 'failed'); ready-when-due
-- states are ('queued', 'scheduled', 'failed'). Times go out as epoch seconds (float8:
-- exact to the microsecond), schedule times as integer microseconds.


-- name: job_columns
-- A job row in StoredJob's field order.
id, handler, queue, payload, state, status, attempts, error,
extract(epoch FROM enqueued_at)::float8 AS enqueued_at,
extract(epoch FROM started_at)::float8 AS started_at,
extract(epoch FROM finished_at)::float8 AS finished_at,
key,
extract(epoch FROM run_at)::float8 AS run_at,
result, progress


-- name: insert_jobs
-- Stores the rows of the CTE `batch` (n, id, queue, handler, key, max_retries, payload,
-- at: epoch seconds or NULL, delay: seconds or NULL), in the order of n. A job due later
-- is 'scheduled'; an `at` in the past means now. A job whose key a live job holds is
-- skipped (ON CONFLICT DO NOTHING). Returns the stored rows' id and queue.
INSERT INTO {schema}.jobs (id, queue, handler, key, max_retries, payload, state, run_at)
SELECT b.id, b.queue, b.handler, b.key, b.max_retries, b.payload,
       CASE WHEN b.start > now() THEN 'scheduled' ELSE 'queued' END,
       greatest(b.start, now())
FROM (SELECT u.n, u.id, u.queue, u.handler, u.key, u.max_retries, u.payload,
             coalesce(to_timestamp(u.at), now() + coalesce(u.delay, 0) * interval '1 second')
                 AS start
      FROM batch u) b
ORDER BY b.n
ON CONFLICT (key) WHERE key IS NOT NULL AND state IN ('queued', 'scheduled', 'running', 'failed')
DO NOTHING
RETURNING id, queue


-- name: enqueue
-- One job: $1 id, $2 queue, $3 handler, $4 key, $5 max_retries, $6 payload, $7 at (epoch
-- seconds), $8 delay (seconds), $9 the NOTIFY channel. Takes every value as a parameter,
-- so it runs as is on any connection. No row: a live job holds the key.
WITH batch AS (
    SELECT 1 AS n, $1::text AS id, $2::text AS queue, $3::text AS handler, $4::text AS key,
           $5::int AS max_retries, $6::bytea AS payload, $7::float8 AS at, $8::float8 AS delay
), ins AS ({insert_jobs})
SELECT id, pg_notify($9, queue)::text AS notified FROM ins


-- name: enqueue_many
-- A batch, in one statement (so all or nothing): $1..$8 one array per column of enqueue,
-- $9 the NOTIFY channel. Returns the ids stored (a job whose key is held is not).
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[],
                         $6::bytea[], $7::float8[], $8::float8[]) WITH ORDINALITY
        AS u(id, queue, handler, key, max_retries, payload, at, delay, n)
), ins AS ({insert_jobs})
SELECT id, (SELECT count(pg_notify($9, q.queue))
            FROM (SELECT DISTINCT queue FROM ins) q) AS notified
FROM ins


-- name: key_holders
-- The live jobs holding the keys $1.
SELECT key, id FROM {schema}.jobs
WHERE key = ANY($1) AND state IN ('queued', 'scheduled', 'running', 'failed')


-- name: get
-- One job, unless its retention is over.
SELECT {job_columns} FROM {schema}.jobs
WHERE id = $1 AND (purge_at IS NULL OR purge_at > now())


-- name: cancel
-- $1 id, $2 retention (seconds), $3 the finished channel (told the id when cancelled). A
-- waiting job is deleted when the retention is 0; a running one is kept until its lease
-- ends, so its consumer learns of it on renew.
WITH gone AS (
    DELETE FROM {schema}.jobs
    WHERE id = $1 AND state IN ('queued', 'scheduled', 'failed') AND $2::float8 = 0
    RETURNING id
), upd AS (
    UPDATE {schema}.jobs SET
        state = 'cancelled', finished_at = now(),
        purge_at = CASE WHEN state = 'running'
            THEN greatest(now() + $2 * interval '1 second', lease_until)
            ELSE now() + $2 * interval '1 second' END
    WHERE id = $1 AND state IN ('queued', 'scheduled', 'running', 'failed')
      AND NOT ($2::float8 = 0 AND state <> 'running')
    RETURNING id
)
SELECT n, CASE WHEN n > 0 THEN pg_notify($3, json_build_array($1::text)::text)::text END
FROM (SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM upd) AS n) c


-- name: stats
-- Counts per queue and state (a due scheduled or failed job counts as queued).
SELECT queue,
       CASE WHEN state IN ('scheduled', 'failed') AND run_at <= now()
            THEN 'queued' ELSE state END AS st,
       count(*) AS n
FROM {schema}.jobs WHERE purge_at IS NULL OR purge_at > now()
GROUP BY 1, 2


-- name: dead_letters
-- $1 queue (NULL: all), $2 limit; oldest death first.
SELECT {job_columns} FROM {schema}.jobs
WHERE state = 'dead' AND ($1::text IS NULL OR queue = $1)
ORDER BY finished_at, seq LIMIT $2


-- name: retry_dead
-- $1 id, $2 keep its key unless another live job holds it, $3 the NOTIFY channel.
UPDATE {schema}.jobs j SET
    state = 'queued', attempts = 0, status = NULL, error = NULL, token = NULL,
    lease_until = NULL, started_at = NULL, finished_at = NULL, run_at = now(),
    result = NULL, progress = NULL,
    key = CASE WHEN $2 AND NOT EXISTS (
        SELECT 1 FROM {schema}.jobs o
        WHERE o.key = j.key AND o.state IN ('queued', 'scheduled', 'running', 'failed')
    ) THEN j.key END
WHERE j.id = $1 AND j.state = 'dead'
RETURNING pg_notify($3, j.queue)::text


-- name: purge_dead
-- $1 queue (NULL: all); how many were deleted.
WITH d AS (
    DELETE FROM {schema}.jobs WHERE state = 'dead' AND ($1::text IS NULL OR queue = $1)
    RETURNING 1
)
SELECT count(*) FROM d


-- name: purge_expired
-- Deletes up to $1 succeeded/cancelled records whose retention is over.
DELETE FROM {schema}.jobs WHERE id IN (
    SELECT id FROM {schema}.jobs WHERE purge_at <= now()
    LIMIT $1 FOR UPDATE SKIP LOCKED)


-- name: claim
-- $1 queues, $2 limit, $3 max_retries (for jobs without their own), $4 token, $5 lease
-- (seconds), $6 the TIMEOUT status, $7 and $8 the two parts of the lease-expired error,
-- $9 the finished channel. Expired leases come first, then ready jobs in the order they
-- became ready. An expired lease over its retries dies (TIMEOUT) instead of being claimed
-- again, and its id is sent on the finished channel (at most $2 ids: one notification);
-- the rows come back in claim order, the dead ones flagged (their caller skips them).
WITH q AS (SELECT DISTINCT unnest($1::text[]) AS queue),
expired AS MATERIALIZED (
    SELECT x.id, x.lease_until, x.attempts > coalesce(x.max_retries, $3) AS dead
    FROM q, LATERAL (
        SELECT j.id, j.lease_until, j.attempts, j.max_retries FROM {schema}.jobs j
        WHERE j.queue = q.queue AND j.state = 'running'
          AND (j.lease_until <= now() OR j.lease_until IS NULL)  -- NULL: a bad write
        ORDER BY j.lease_until LIMIT $2
        FOR UPDATE SKIP LOCKED
    ) x
),
ready AS MATERIALIZED (
    SELECT x.id, x.run_at, x.seq
    FROM q, LATERAL (
        SELECT j.id, j.run_at, j.seq FROM {schema}.jobs j
        WHERE j.queue = q.queue AND j.state IN ('queued', 'scheduled', 'failed')
          AND j.run_at <= now()
        ORDER BY j.run_at, j.seq LIMIT $2
        FOR UPDATE SKIP LOCKED
    ) x
),
picked AS (
    SELECT id, dead, n FROM (
        SELECT id, dead, row_number() OVER (ORDER BY lease_until) AS n FROM expired
        UNION ALL
        SELECT id, false, 1000000 + row_number() OVER (ORDER BY run_at, seq) FROM ready
    ) a ORDER BY n LIMIT $2
),
upd AS (
    UPDATE {schema}.jobs j SET
        state = CASE WHEN p.dead THEN 'dead' ELSE 'running' END,
        attempts = j.attempts + CASE WHEN p.dead THEN 0 ELSE 1 END,
        token = CASE WHEN p.dead THEN NULL ELSE $4 END,
        lease_until = CASE WHEN p.dead THEN NULL ELSE now() + $5 * interval '1 second' END,
        started_at = CASE WHEN p.dead THEN j.started_at ELSE now() END,
        finished_at = CASE WHEN p.dead THEN now() ELSE NULL END,
        status = CASE WHEN p.dead THEN $6::smallint ELSE j.status END,
        error = CASE WHEN p.dead THEN $7::text || j.attempts::text || $8::text
                     ELSE j.error END
    FROM picked p
    WHERE j.id = p.id
    RETURNING j.id, j.attempts, j.payload, p.dead, p.n
)
SELECT id, attempts, payload, dead,
       (SELECT count(pg_notify($9, CASE WHEN octet_length(d.ids) <= 7900 THEN d.ids
                                        ELSE '*' END))
        FROM (SELECT json_agg(id)::text AS ids FROM upd WHERE dead) d
        WHERE d.ids IS NOT NULL) AS finished
FROM upd ORDER BY n


-- name: renew
-- $1 ids, $2 tokens, $3 lease (seconds), $4 progress (encoded JSON, NULL: no report).
-- Extends the leases still held and stores their progress reports. Returns the rows not
-- extended, with their state and whether the token is still theirs.
WITH r AS (
    SELECT * FROM unnest($1::text[], $2::text[], $4::bytea[]) AS r(id, token, progress)
), upd AS (
    UPDATE {schema}.jobs j SET lease_until = now() + $3 * interval '1 second',
                               progress = coalesce(r.progress, j.progress)
    FROM r
    WHERE j.id = r.id AND j.token = r.token AND j.state = 'running'
    RETURNING j.id, j.token
)
SELECT r.id, j.state, j.token IS NOT DISTINCT FROM r.token AS mine
FROM r LEFT JOIN {schema}.jobs j ON j.id = r.id
WHERE NOT EXISTS (SELECT 1 FROM upd WHERE upd.id = r.id AND upd.token = r.token)


-- name: settle
-- $1 ids, $2 tokens, $3 states, $4 statuses, $5 errors, $6 retry delays (seconds), $7
-- retention (seconds), $8 the NOTIFY channel, $9 results and $10 progress (encoded JSON
-- or NULL), $11 the finished channel. Each row only if its token still holds it; returns
-- the ids applied. Failed and released jobs wake consumers of their queues; the ids of
-- finished jobs (succeeded, dead) wake broker.wait, a JSON array per 100 of them ('*' if
-- that would not fit a notification's 8000 bytes).
WITH o AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::smallint[],
                         $5::text[], $6::float8[], $9::bytea[], $10::bytea[])
        AS o(id, token, state, status, error, retry_in, result, progress)
), gone AS (
    DELETE FROM {schema}.jobs j USING o
    WHERE $7::float8 = 0 AND o.state = 'succeeded'
      AND j.id = o.id AND j.token = o.token AND j.state = 'running'
    RETURNING j.id
), done AS (
    UPDATE {schema}.jobs j SET
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
        purge_at = CASE WHEN o.state = 'succeeded' THEN now() + $7 * interval '1 second' END,
        result = CASE WHEN o.state = 'succeeded' THEN o.result ELSE j.result END,
        progress = coalesce(o.progress, j.progress)
    FROM o
    WHERE NOT ($7::float8 = 0 AND o.state = 'succeeded')
      AND j.id = o.id AND j.token = o.token AND j.state = 'running'
    RETURNING j.id, j.queue, o.state
), finished AS (
    SELECT id FROM gone UNION ALL SELECT id FROM done WHERE state IN ('succeeded', 'dead')
)
SELECT id, (SELECT count(pg_notify($8, w.queue))
            FROM (SELECT DISTINCT queue FROM done WHERE state IN ('failed', 'queued')) w)
           AS notified,
       (SELECT count(pg_notify($11, CASE WHEN octet_length(c.ids) <= 7900 THEN c.ids
                                         ELSE '*' END))
        FROM (SELECT json_agg(f.id)::text AS ids
              FROM (SELECT id, (row_number() OVER ()) / 100 AS chunk FROM finished) f
              GROUP BY f.chunk) c)
           AS finished
FROM (SELECT id FROM gone UNION ALL SELECT id FROM done) a


-- name: next_due
-- Seconds until the next job of the queues $1 is due or the next lease expires (NULL:
-- none); two LIMIT 1 index probes per queue.
WITH q AS (SELECT DISTINCT unnest($1::text[]) AS queue)
SELECT extract(epoch FROM least(
    (SELECT min(x.run_at) FROM q, LATERAL (
        SELECT j.run_at FROM {schema}.jobs j
        WHERE j.queue = q.queue AND j.state IN ('queued', 'scheduled', 'failed')
        ORDER BY j.run_at LIMIT 1) x),
    (SELECT min(x.lease_until) FROM q, LATERAL (
        SELECT j.lease_until FROM {schema}.jobs j
        WHERE j.queue = q.queue AND j.state = 'running'
        ORDER BY j.lease_until LIMIT 1) x)
) - now())::float8


-- name: schedule
-- Declares $1 name: $2 job, $3 every, $4 cron, $5 timezone, $6 jitter, $7 misfire, $8
-- first run (µs). Redeclaring with the same every/cron/timezone keeps next_run_at (and
-- always last_run_at); the row lock of ON CONFLICT makes concurrent declarations safe.
-- Returns the row in StoredSchedule's field order.
INSERT INTO {schema}.schedules AS s
    (name, job, every, cron, timezone, jitter, misfire, next_run_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (name) DO UPDATE SET
    job = excluded.job, every = excluded.every, cron = excluded.cron,
    timezone = excluded.timezone, jitter = excluded.jitter, misfire = excluded.misfire,
    next_run_at = CASE
        WHEN s.every IS NOT DISTINCT FROM excluded.every
         AND s.cron IS NOT DISTINCT FROM excluded.cron
         AND s.timezone = excluded.timezone
        THEN s.next_run_at ELSE excluded.next_run_at END
RETURNING name, job, every, cron, timezone, jitter, misfire, next_run_at, last_run_at


-- name: unschedule
DELETE FROM {schema}.schedules WHERE name = $1


-- name: schedules
-- Every schedule, in StoredSchedule's field order.
SELECT name, job, every, cron, timezone, jitter, misfire, next_run_at, last_run_at
FROM {schema}.schedules


-- name: due_schedules
-- The earliest next run after $1 (µs) of the schedules not due, then the due ones
-- (StoredSchedule's fields), by next run and name: always one row at least (a row
-- without a due schedule carries only `later`).
SELECT l.later, d.*
FROM (SELECT min(next_run_at) AS later FROM {schema}.schedules WHERE next_run_at > $1) l
LEFT JOIN (
    SELECT name, job, every, cron, timezone, jitter, misfire, next_run_at, last_run_at
    FROM {schema}.schedules WHERE next_run_at <= $1
) d ON true
ORDER BY d.next_run_at, d.name


-- name: fire
-- The compare-and-set of schedule $10 from next run $11 to $12 (last run $13, all µs)
-- and, only if it matched, the inserts of the tick's jobs ($1..$8 as in enqueue_many,
-- $9 the NOTIFY channel): one statement, so one transaction. A concurrent fire of the
-- same tick waits for the row lock, re-reads next_run_at, matches nothing, inserts nothing.
WITH won AS (
    UPDATE {schema}.schedules SET next_run_at = $12, last_run_at = $13
    WHERE name = $10 AND next_run_at = $11
    RETURNING name
), batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[],
                         $6::bytea[], $7::float8[], $8::float8[]) WITH ORDINALITY
        AS u(id, queue, handler, key, max_retries, payload, at, delay, n)
    WHERE EXISTS (SELECT 1 FROM won)
), ins AS ({insert_jobs})
SELECT (SELECT count(*) FROM won) AS won,
       (SELECT count(pg_notify($9, q.queue)) FROM (SELECT DISTINCT queue FROM ins) q)
           AS notified


-- name: schema_version
-- The version stamped on the table $1 (NULL: no such table).
SELECT obj_description(to_regclass($1), 'pg_class')


-- name: lock_schema
-- Serialises migrations of one schema ($1: 'pywork.<schema>') until the transaction ends.
SELECT pg_advisory_xact_lock(hashtext($1))
