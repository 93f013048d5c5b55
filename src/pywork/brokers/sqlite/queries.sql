-- The SQL of SQLiteBroker: the schema and every query, by name (see pywork.brokers.queries).
--
-- Parameters are positional `?`, or numbered `?N` where one value is used several times.
-- `{queues}` is the one substitution, filled by the broker with a `?, ?, …` list (one per
-- queue of the call); a bare `?` after `?N` parameters takes the next number, so the queue
-- names are bound after the numbered values.
--
-- A live job is one in state queued, scheduled, running or failed: it holds its key.
-- `run_at` is the time a row next matters: when a scheduled/failed job becomes due, when a
-- lease expires, when a finished (succeeded/cancelled) record is purged.


-- name: schema
-- Run once per connection in a BEGIN IMMEDIATE transaction; idempotent.
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
    run_at REAL,
    result BLOB,
    progress BLOB
);
CREATE INDEX IF NOT EXISTS pywork_jobs_ready ON pywork_jobs (queue, seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS pywork_jobs_timed ON pywork_jobs (state, run_at);
CREATE UNIQUE INDEX IF NOT EXISTS pywork_jobs_key ON pywork_jobs (key)
    WHERE key IS NOT NULL AND state IN ('queued', 'scheduled', 'running', 'failed');
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

-- name: job_columns
-- The columns of pywork_jobs, to upgrade a file created by an older pywork (in the
-- schema's transaction: the add_*_column queries below add the missing ones).
SELECT name FROM pragma_table_info('pywork_jobs')

-- name: add_result_column
-- Files created before results and progress (contract §10) have neither column.
ALTER TABLE pywork_jobs ADD COLUMN result BLOB

-- name: add_progress_column
ALTER TABLE pywork_jobs ADD COLUMN progress BLOB


-- jobs: producer side --------------------------------------------------------------------

-- name: key_holder
-- The live job holding a key (key).
SELECT id FROM pywork_jobs
WHERE key = ? AND state IN ('queued', 'scheduled', 'running', 'failed')

-- name: insert
-- (id, queue, handler, payload, key, max_retries, state, enqueued_at, run_at)
INSERT INTO pywork_jobs
    (id, queue, handler, payload, key, max_retries, state, enqueued_at, run_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)

-- name: get
-- One job (id), its columns in StoredJob's order.
SELECT id, handler, queue, payload, state, status, attempts, error,
       enqueued_at, started_at, finished_at, key, run_at, result, progress
FROM pywork_jobs WHERE id = ?

-- name: live_job
-- The state and run_at of a live job (id), for cancel.
SELECT state, run_at FROM pywork_jobs
WHERE id = ? AND state IN ('queued', 'scheduled', 'running', 'failed')

-- name: delete_job
DELETE FROM pywork_jobs WHERE id = ?

-- name: cancel
-- (finished_at, keep the record until, id)
UPDATE pywork_jobs SET state = 'cancelled', finished_at = ?, run_at = ? WHERE id = ?

-- name: stats
-- Per queue and state, how many jobs (now); due scheduled/failed jobs count as queued.
SELECT queue,
       CASE WHEN state IN ('scheduled', 'failed') AND run_at <= ? THEN 'queued'
            ELSE state END AS s,
       count(*)
FROM pywork_jobs GROUP BY queue, s

-- name: dead_letters
-- (?1 queue or NULL for every queue, ?2 limit), oldest death first.
SELECT id, handler, queue, payload, state, status, attempts, error,
       enqueued_at, started_at, finished_at, key, run_at, result, progress
FROM pywork_jobs
WHERE state = 'dead' AND (?1 IS NULL OR queue = ?1)
ORDER BY finished_at, seq LIMIT ?2

-- name: retry_dead
-- (id) Queue a dead job again, keeping its key; fails on the key index when another
-- live job holds the key now (then retry_dead_without_key).
UPDATE pywork_jobs SET state = 'queued', attempts = 0, status = NULL, error = NULL,
    token = NULL, started_at = NULL, finished_at = NULL, run_at = NULL, result = NULL,
    progress = NULL
WHERE id = ? AND state = 'dead'
RETURNING queue

-- name: retry_dead_without_key
-- (id) As retry_dead, dropping the key another live job holds.
UPDATE pywork_jobs SET state = 'queued', attempts = 0, status = NULL, error = NULL,
    token = NULL, started_at = NULL, finished_at = NULL, run_at = NULL, result = NULL,
    progress = NULL, key = NULL
WHERE id = ? AND state = 'dead'
RETURNING queue

-- name: purge_dead
-- (?1 queue or NULL for every queue)
DELETE FROM pywork_jobs WHERE state = 'dead' AND (?1 IS NULL OR queue = ?1)


-- jobs: consumer side --------------------------------------------------------------------

-- name: claim_expire
-- Take back the expired leases of {queues}: queued again, or dead with the lease-expired
-- error (?3 || attempts || ?4) once attempts exceed the job's max_retries, else ?1; the
-- rows returned tell the broker which jobs ended (to wake broker.wait).
-- (?1 max_retries, ?2 now, ?3 and ?4 the two parts of LEASE_EXPIRED, ?5 status TIMEOUT,
-- then the queues)
UPDATE pywork_jobs SET
    state = CASE WHEN attempts > coalesce(max_retries, ?1) THEN 'dead' ELSE 'queued' END,
    status = CASE WHEN attempts > coalesce(max_retries, ?1) THEN ?5 ELSE status END,
    error = CASE WHEN attempts > coalesce(max_retries, ?1) THEN ?3 || attempts || ?4
                 ELSE error END,
    finished_at = CASE WHEN attempts > coalesce(max_retries, ?1) THEN ?2 ELSE NULL END,
    token = NULL, run_at = NULL
WHERE state = 'running' AND run_at <= ?2 AND queue IN ({queues})
RETURNING state, id

-- name: claim_promote
-- Make the due scheduled/failed jobs of {queues} ready. (now, then the queues)
UPDATE pywork_jobs SET state = 'queued', run_at = NULL
WHERE state IN ('scheduled', 'failed') AND run_at <= ? AND queue IN ({queues})

-- name: claim_lease
-- Lease the oldest ready jobs of {queues}. (token, now, lease end, the queues, limit)
UPDATE pywork_jobs SET state = 'running', attempts = attempts + 1, token = ?,
    started_at = ?, run_at = ?
WHERE seq IN (
    SELECT seq FROM pywork_jobs WHERE state = 'queued' AND queue IN ({queues})
    ORDER BY seq LIMIT ?)
RETURNING seq, id, attempts, payload

-- name: purge_finished
-- Delete the succeeded and cancelled records whose retention ended (now).
DELETE FROM pywork_jobs WHERE state IN ('succeeded', 'cancelled') AND run_at <= ?

-- name: peek_ready
-- Is a job of {queues} ready?
SELECT 1 FROM pywork_jobs WHERE state = 'queued' AND queue IN ({queues}) LIMIT 1

-- name: peek_due
-- The earliest time a job of {queues} becomes due or its lease expires.
SELECT min(run_at) FROM pywork_jobs
WHERE state IN ('scheduled', 'failed', 'running') AND queue IN ({queues})

-- name: renew
-- (lease end, the encoded progress or NULL to keep the stored one, id, token)
UPDATE pywork_jobs SET run_at = ?, progress = coalesce(?, progress)
WHERE id = ? AND token = ? AND state = 'running'

-- name: lease_holder
-- Why a renewal failed: the state and token of a job (id).
SELECT state, token FROM pywork_jobs WHERE id = ?

-- name: settle_succeeded
-- (status, finished_at, keep the record until, result, progress or NULL, id, token)
UPDATE pywork_jobs SET state = 'succeeded', status = ?, error = NULL, token = NULL,
    finished_at = ?, run_at = ?, result = ?, progress = coalesce(?, progress)
WHERE id = ? AND token = ? AND state = 'running'
RETURNING queue

-- name: settle_succeeded_unkept
-- With retention 0. (id, token)
DELETE FROM pywork_jobs WHERE id = ? AND token = ? AND state = 'running'
RETURNING queue

-- name: settle_failed
-- (status, error, due for its retry at, progress or NULL, id, token)
UPDATE pywork_jobs SET state = 'failed', status = ?, error = ?, token = NULL, run_at = ?,
    progress = coalesce(?, progress)
WHERE id = ? AND token = ? AND state = 'running'
RETURNING queue

-- name: settle_dead
-- (status, error, finished_at, progress or NULL, id, token)
UPDATE pywork_jobs SET state = 'dead', status = ?, error = ?, token = NULL,
    finished_at = ?, run_at = NULL, progress = coalesce(?, progress)
WHERE id = ? AND token = ? AND state = 'running'
RETURNING queue

-- name: settle_queued
-- Released untouched at shutdown: the attempt is not counted. (progress or NULL, id, token)
UPDATE pywork_jobs SET state = 'queued', token = NULL, run_at = NULL,
    attempts = max(attempts - 1, 0), progress = coalesce(?, progress)
WHERE id = ? AND token = ? AND state = 'running'
RETURNING queue


-- cluster schedules ------------------------------------------------------------------------

-- name: schedule_timing
-- (name) The stored timing of a schedule.
SELECT every, cron, timezone, next_run_at FROM pywork_schedules WHERE name = ?

-- name: schedule_upsert
-- (name, payload, every, cron, timezone, jitter, misfire, next_run_at); last_run_at kept.
INSERT INTO pywork_schedules
    (name, payload, every, cron, timezone, jitter, misfire, next_run_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET payload = excluded.payload, every = excluded.every,
    cron = excluded.cron, timezone = excluded.timezone, jitter = excluded.jitter,
    misfire = excluded.misfire, next_run_at = excluded.next_run_at
RETURNING name, payload, every, cron, timezone, jitter, misfire, next_run_at, last_run_at

-- name: unschedule
DELETE FROM pywork_schedules WHERE name = ?

-- name: schedules
SELECT name, payload, every, cron, timezone, jitter, misfire, next_run_at, last_run_at
FROM pywork_schedules

-- name: due_schedules
-- (at) The schedules due at `at` (µs), by next run then name.
SELECT name, payload, every, cron, timezone, jitter, misfire, next_run_at, last_run_at
FROM pywork_schedules WHERE next_run_at <= ?
ORDER BY next_run_at, name

-- name: next_schedule_after
-- (at) The earliest next run of the schedules not due at `at`.
SELECT min(next_run_at) FROM pywork_schedules WHERE next_run_at > ?

-- name: fire
-- The compare-and-set of a tick. (next_run_at, last_run_at, name, expected next_run_at)
UPDATE pywork_schedules SET next_run_at = ?, last_run_at = ?
WHERE name = ? AND next_run_at = ?
