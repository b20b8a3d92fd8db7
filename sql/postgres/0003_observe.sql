-- kobo schema on PostgreSQL: observability and recurring jobs. The tables
-- SQLite's 0004 (node_metrics_minute) and 0005 (schedules) add, and the
-- readable views of SQLite's migrations for people using psql: the same
-- names, the same columns in the same order and the same values, dates as
-- the same UTC text ('2027-01-15 08:00:00.000'), rounded figures as
-- DOUBLE PRECISION where SQLite's are REAL. v_audit and v_usage read tables
-- of the security migration (audit_log, api_keys) and are made there.
-- Needs only 0001_core.sql.

CREATE TABLE node_metrics_minute (
    node_id            TEXT NOT NULL REFERENCES nodes (node_id) ON DELETE CASCADE,
    minute             BIGINT NOT NULL,       -- start of the minute, ms since the epoch
    samples            BIGINT NOT NULL,       -- raw heartbeats folded in
    cpu_percent_avg    DOUBLE PRECISION NOT NULL,
    cpu_percent_max    DOUBLE PRECISION NOT NULL,
    mem_used_bytes_avg BIGINT NOT NULL,
    mem_total_bytes    BIGINT NOT NULL,
    load_1_avg         DOUBLE PRECISION NOT NULL,
    disk_used_bytes    BIGINT NOT NULL,
    disk_total_bytes   BIGINT NOT NULL,
    running_avg        DOUBLE PRECISION NOT NULL,
    running_max        BIGINT NOT NULL,
    PRIMARY KEY (node_id, minute)
);

CREATE INDEX node_metrics_minute_at ON node_metrics_minute (minute);

-- Recurring jobs. Each firing claims its slots by moving next_fire_at (a
-- compare-and-set) and submits `job` with the idempotency key
-- `schedule:<name>:<slot ms>`, so no slot fires twice, across restarts and
-- coordinators too.
CREATE TABLE schedules (
    name          TEXT PRIMARY KEY,
    cron          TEXT NOT NULL,                -- the cron crate's syntax, in UTC
    job           TEXT NOT NULL,                -- JSON body of POST /v1/jobs (sealed if confidential)
    catch_up      TEXT NOT NULL CHECK (catch_up IN ('once', 'all', 'none')),
    paused        BIGINT NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    next_fire_at  BIGINT NOT NULL,
    last_fired_at BIGINT,
    last_job_id   BIGINT,
    created_at    BIGINT NOT NULL,
    created_by    TEXT NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE paused = 0;

-- SQLite's strftime('%Y-%m-%d %H:%M:%f', ms / 1000.0, 'unixepoch') is
-- to_char(to_timestamp(ms / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS');
-- its (julianday('now') - 2440587.5) * 86400000.0 is extract(epoch FROM now()) * 1000.

-- One row per job: its node and region, times, durations, attempts, and why
-- it waits or went where it went. Confidential jobs show `(confidential)`:
-- their sealed `request`/`result` are never read here.
CREATE VIEW v_jobs AS
SELECT
    j.id,
    j.state,
    j.kind,
    j.model,
    j.priority,
    j.attempts || '/' || j.max_attempts                                  AS attempts,
    j.node_id,
    n.region,
    j.submitted_by,
    to_char(to_timestamp(j.created_at / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')       AS created,
    to_char(to_timestamp(j.first_started_at / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS') AS started,
    to_char(to_timestamp(j.finished_at / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')      AS finished,
    j.first_started_at - j.created_at                                    AS wait_ms,
    CASE WHEN j.finished_at IS NOT NULL THEN j.finished_at - j.last_started_at END AS run_ms,
    CASE WHEN j.finished_at IS NOT NULL THEN j.finished_at - j.created_at END AS total_ms,
    CASE WHEN j.confidential = 0 THEN CAST(j.result::json #>> '{usage,duration_ms}' AS BIGINT) END AS llm_ms,
    CASE WHEN j.confidential = 0 THEN CAST(j.result::json #>> '{usage,completion_tokens}' AS BIGINT) END AS completion_tokens,
    j.last_error,
    j.queue_reason,
    j.route_reason,
    CASE WHEN j.confidential = 1 THEN '(confidential)'
         ELSE substr(j.result::json ->> 'text', 1, 80) END                AS result_head
FROM (
    SELECT id, state, kind, model, priority, attempts, max_attempts, node_id,
           submitted_by, created_at, finished_at, confidential, result,
           last_error, queue_reason, route_reason,
           (SELECT min(a.started_at) FROM job_attempts a WHERE a.job_id = jobs.id) AS first_started_at,
           (SELECT a.started_at FROM job_attempts a WHERE a.job_id = jobs.id
             ORDER BY a.lease_token DESC LIMIT 1)                           AS last_started_at
    FROM jobs
) j
LEFT JOIN nodes n ON n.node_id = j.node_id;

CREATE VIEW v_job_events AS
SELECT
    e.job_id,
    to_char(to_timestamp(e.at / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS') AS at,
    e.from_state,
    e.to_state,
    e.node_id,
    e.attempt,
    e.detail
FROM job_events e;

-- Per node: jobs done, success rate, response time (lease to report, as the
-- coordinator saw it) mean/p50/p95, LLM tokens per second, last seen, and
-- the latest heartbeat's CPU and memory.
CREATE VIEW v_node_stats AS
WITH done AS (
    SELECT a.node_id,
           a.finished_at - a.started_at AS response_ms,
           a.duration_ms,
           a.completion_tokens,
           row_number() OVER (PARTITION BY a.node_id ORDER BY a.finished_at - a.started_at) AS rank_ms,
           count(*) OVER (PARTITION BY a.node_id)                                         AS n
    FROM job_attempts a
    WHERE a.outcome = 'succeeded' AND a.finished_at IS NOT NULL
),
per_node AS (
    SELECT node_id,
           CAST(round(avg(response_ms)) AS DOUBLE PRECISION)            AS mean_response_ms,
           min(CASE WHEN rank_ms >= 0.50 * n THEN response_ms END)      AS p50_response_ms,
           min(CASE WHEN rank_ms >= 0.95 * n THEN response_ms END)      AS p95_response_ms,
           CAST(round(avg(duration_ms)) AS DOUBLE PRECISION)            AS mean_llm_ms,
           CAST(round(1000.0 * sum(completion_tokens) / nullif(sum(duration_ms), 0), 1) AS DOUBLE PRECISION) AS tokens_per_s
    FROM done
    GROUP BY node_id
)
SELECT
    n.node_id,
    n.region,
    n.status,
    n.max_workers,
    (SELECT count(*) FROM jobs j WHERE j.state = 'leased' AND j.node_id = n.node_id) AS running,
    n.jobs_succeeded + n.jobs_failed                                   AS jobs_done,
    n.jobs_succeeded,
    n.jobs_failed,
    CASE WHEN n.jobs_succeeded + n.jobs_failed > 0
         THEN CAST(round(100.0 * n.jobs_succeeded / (n.jobs_succeeded + n.jobs_failed), 1) AS DOUBLE PRECISION) END AS success_pct,
    p.mean_response_ms,
    p.p50_response_ms,
    p.p95_response_ms,
    p.mean_llm_ms,
    p.tokens_per_s,
    n.rtt_ms,
    to_char(to_timestamp(n.last_heartbeat_at / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS last_seen,
    CAST(round((extract(epoch FROM now()) * 1000 - n.last_heartbeat_at) / 1000.0, 1) AS DOUBLE PRECISION) AS seen_s_ago,
    CAST(round(CAST(m.cpu_percent AS NUMERIC), 1) AS DOUBLE PRECISION) AS cpu_pct,
    CAST(round(100.0 * m.mem_used_bytes / nullif(m.mem_total_bytes, 0), 1) AS DOUBLE PRECISION) AS mem_pct,
    m.load_1
FROM nodes n
LEFT JOIN per_node p ON p.node_id = n.node_id
LEFT JOIN node_metrics m
  ON m.node_id = n.node_id
 AND m.at = (SELECT max(at) FROM node_metrics WHERE node_id = n.node_id);

CREATE VIEW v_node_metrics_minute AS
SELECT
    node_id,
    to_char(to_timestamp(minute / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS minute,
    samples,
    CAST(round(CAST(cpu_percent_avg AS NUMERIC), 1) AS DOUBLE PRECISION)  AS cpu_pct,
    CAST(round(CAST(cpu_percent_max AS NUMERIC), 1) AS DOUBLE PRECISION)  AS cpu_pct_max,
    CAST(round(100.0 * mem_used_bytes_avg / nullif(mem_total_bytes, 0), 1) AS DOUBLE PRECISION) AS mem_pct,
    CAST(round(CAST(load_1_avg AS NUMERIC), 2) AS DOUBLE PRECISION)       AS load_1,
    CAST(round(CAST(running_avg AS NUMERIC), 2) AS DOUBLE PRECISION)      AS running,
    running_max
FROM node_metrics_minute;

-- The queue: jobs not finished, by state, kind and priority, with the
-- oldest one's age (queued: since ready; scheduled: since submitted;
-- leased: since leased).
CREATE VIEW v_queue AS
SELECT
    state,
    kind,
    priority,
    count(*)                                                           AS jobs,
    to_char(to_timestamp(min(CASE state WHEN 'queued' THEN ready_at WHEN 'scheduled' THEN created_at ELSE updated_at END) / 1000.0)
            AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')               AS oldest_since,
    CAST(round((extract(epoch FROM now()) * 1000
           - min(CASE state WHEN 'queued' THEN ready_at WHEN 'scheduled' THEN created_at ELSE updated_at END)) / 1000.0, 1) AS DOUBLE PRECISION) AS oldest_age_s,
    to_char(to_timestamp(min(CASE WHEN state = 'scheduled' THEN run_at END) / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS next_run
FROM jobs
WHERE state IN ('scheduled', 'queued', 'leased')
GROUP BY state, kind, priority
ORDER BY CASE state WHEN 'queued' THEN 0 WHEN 'scheduled' THEN 1 ELSE 2 END, kind, priority DESC;

CREATE VIEW v_schedules AS
SELECT name, cron, catch_up, paused,
       to_char(to_timestamp(next_fire_at / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')  AS next_fire,
       to_char(to_timestamp(last_fired_at / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS last_fired,
       last_job_id, created_by
FROM schedules;
