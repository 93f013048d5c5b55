-- The tables and indexes of one PostgresBroker schema: one script, run by the migration
-- inside a transaction holding the schema's advisory lock (see queries.sql: lock_schema).
-- Every statement is idempotent. {schema} is the quoted schema identifier; the last
-- statement stamps the jobs table with {version} (PostgresBroker.SCHEMA_VERSION), so a
-- connect finding it runs none of this.

SET LOCAL client_min_messages = warning;

CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}.jobs (
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
    purge_at timestamptz,
    result bytea,
    progress bytea
);

-- results and progress (v3): a table made by v1 or v2 gains them
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS result bytea;
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS progress bytea;

-- claim: per queue, the ready and due jobs in the order they became ready
CREATE INDEX IF NOT EXISTS jobs_ready ON {schema}.jobs (queue, run_at, seq)
    WHERE state IN ('queued', 'scheduled', 'failed');

-- claim (expired leases) and wait_for_work (next lease expiry)
CREATE INDEX IF NOT EXISTS jobs_leases ON {schema}.jobs (queue, lease_until)
    WHERE state = 'running';

-- unique jobs: one live job per key
CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON {schema}.jobs (key)
    WHERE key IS NOT NULL AND state IN ('queued', 'scheduled', 'running', 'failed');

-- lazy deletion of succeeded/cancelled records after the retention
CREATE INDEX IF NOT EXISTS jobs_purge ON {schema}.jobs (purge_at) WHERE purge_at IS NOT NULL;

CREATE INDEX IF NOT EXISTS jobs_dead ON {schema}.jobs (finished_at, seq) WHERE state = 'dead';

-- cluster schedules (v2); times are integer microseconds since the epoch, so the
-- compare-and-set of fire is exact
CREATE TABLE IF NOT EXISTS {schema}.schedules (
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
);

CREATE INDEX IF NOT EXISTS schedules_next ON {schema}.schedules (next_run_at);

COMMENT ON TABLE {schema}.jobs IS '{version}';
