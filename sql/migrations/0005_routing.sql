-- Routing, drain and recurring jobs.

-- Coordinates a node states (else the map and nearness use its region's).
ALTER TABLE nodes ADD COLUMN latitude REAL;
ALTER TABLE nodes ADD COLUMN longitude REAL;

-- Delay scheduling: a job preferring a node or region that is busy waits for
-- it until this time (counted from when it first became ready, never
-- reset); 0 once the wait is over, NULL when there is nothing to wait for.
ALTER TABLE jobs ADD COLUMN locality_until INTEGER;
CREATE INDEX jobs_locality ON jobs (locality_until) WHERE state = 'queued' AND locality_until > 0;

-- Recurring jobs. Each firing submits `job` with the idempotency key
-- `schedule:<name>:<slot ms>`, so no slot fires twice, across restarts too.
CREATE TABLE schedules (
    name          TEXT PRIMARY KEY,
    cron          TEXT NOT NULL,                -- the cron crate's syntax, in UTC
    job           TEXT NOT NULL,                -- JSON body of POST /v1/jobs (sealed if confidential)
    catch_up      TEXT NOT NULL CHECK (catch_up IN ('once', 'all', 'none')),
    paused        INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    next_fire_at  INTEGER NOT NULL,
    last_fired_at INTEGER,
    last_job_id   INTEGER,
    created_at    INTEGER NOT NULL,
    created_by    TEXT NOT NULL
) STRICT;
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE paused = 0;

CREATE VIEW v_schedules AS
SELECT name, cron, catch_up, paused,
       strftime('%Y-%m-%d %H:%M:%S', next_fire_at / 1000.0, 'unixepoch') AS next_fire,
       strftime('%Y-%m-%d %H:%M:%S', last_fired_at / 1000.0, 'unixepoch') AS last_fired,
       last_job_id, created_by
FROM schedules;
