-- kobo schema, version 1. Timestamps are integer milliseconds since the Unix
-- epoch; the views in 0002_views.sql turn them into readable dates.

CREATE TABLE nodes (
    node_id           TEXT PRIMARY KEY,
    instance_id       TEXT NOT NULL,          -- random per agent process
    region            TEXT NOT NULL,
    capabilities      TEXT NOT NULL,          -- JSON array of strings
    max_workers       INTEGER NOT NULL CHECK (max_workers > 0),
    gpu               INTEGER NOT NULL DEFAULT 0 CHECK (gpu IN (0, 1)),
    backend           TEXT NOT NULL,
    models            TEXT NOT NULL DEFAULT '[]',   -- JSON array
    loaded_models     TEXT,                          -- JSON array, from /api/ps
    agent_version     TEXT NOT NULL DEFAULT '',
    specialization    TEXT,
    status            TEXT NOT NULL CHECK (status IN ('active', 'lost', 'draining', 'drained')),
    registered_at     INTEGER NOT NULL,
    last_heartbeat_at INTEGER NOT NULL,
    rtt_ms            INTEGER,
    jobs_succeeded    INTEGER NOT NULL DEFAULT 0,
    jobs_failed       INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX nodes_heartbeat ON nodes (last_heartbeat_at) WHERE status IN ('active', 'draining');

CREATE TABLE node_metrics (
    node_id          TEXT NOT NULL REFERENCES nodes (node_id) ON DELETE CASCADE,
    at               INTEGER NOT NULL,
    cpu_percent      REAL NOT NULL,
    mem_used_bytes   INTEGER NOT NULL,
    mem_total_bytes  INTEGER NOT NULL,
    load_1           REAL NOT NULL,
    load_5           REAL NOT NULL,
    load_15          REAL NOT NULL,
    disk_used_bytes  INTEGER NOT NULL,
    disk_total_bytes INTEGER NOT NULL,
    running          INTEGER NOT NULL,
    PRIMARY KEY (node_id, at)
) STRICT, WITHOUT ROWID;

CREATE INDEX node_metrics_at ON node_metrics (at);

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    state            TEXT NOT NULL CHECK (state IN ('scheduled', 'queued', 'leased', 'succeeded', 'dead', 'cancelled')),
    kind             TEXT NOT NULL,
    model            TEXT,
    priority         INTEGER NOT NULL DEFAULT 0,
    request          TEXT NOT NULL,                 -- JSON LlmRequest
    req_capabilities TEXT NOT NULL DEFAULT '[]',    -- JSON array, besides kind
    req_gpu          INTEGER NOT NULL DEFAULT 0 CHECK (req_gpu IN (0, 1)),
    data_location    TEXT,
    confidential     INTEGER NOT NULL DEFAULT 0 CHECK (confidential IN (0, 1)),
    prefer_region    TEXT,
    prefer_node      TEXT,
    max_attempts     INTEGER NOT NULL CHECK (max_attempts > 0),
    attempts         INTEGER NOT NULL DEFAULT 0,
    timeout_ms       INTEGER,
    idempotency_key  TEXT UNIQUE,
    run_at           INTEGER NOT NULL,              -- not before this time
    ready_at         INTEGER,                       -- when it last became queued
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    node_id          TEXT,                          -- lease holder, or last runner
    lease_token      INTEGER NOT NULL DEFAULT 0,    -- fencing token, +1 per grant
    lease_expires_at INTEGER,
    finished_at      INTEGER,
    last_error       TEXT,
    result           TEXT,                          -- JSON LlmOutput
    queue_reason     TEXT,
    route_reason     TEXT
) STRICT;

-- Leasing walks this index per kind: O(log n) whatever the queue depth.
CREATE INDEX jobs_queued ON jobs (kind, priority DESC, ready_at, id) WHERE state = 'queued';
CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX jobs_lease_expiry ON jobs (lease_expires_at) WHERE state = 'leased';
CREATE INDEX jobs_leased_node ON jobs (node_id) WHERE state = 'leased';
CREATE INDEX jobs_state ON jobs (state, id);

CREATE TABLE job_attempts (
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    lease_token INTEGER NOT NULL,
    node_id     TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    outcome     TEXT NOT NULL CHECK (outcome IN ('running', 'succeeded', 'failed', 'expired', 'node_lost', 'node_restarted', 'cancelled', 'undelivered')),
    error       TEXT,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    duration_ms       INTEGER,
    PRIMARY KEY (job_id, lease_token)
) STRICT;

CREATE INDEX job_attempts_node ON job_attempts (node_id, started_at);

CREATE TABLE job_events (
    id         INTEGER PRIMARY KEY,
    job_id     INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at         INTEGER NOT NULL,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    node_id    TEXT,
    attempt    INTEGER NOT NULL,
    detail     TEXT
) STRICT;

CREATE INDEX job_events_job ON job_events (job_id, id);
