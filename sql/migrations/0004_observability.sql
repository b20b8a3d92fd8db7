-- Observability: node metrics downsampled per minute (the raw heartbeat
-- series is kept for a day, the per-minute series for a month; both are
-- configurable, see `kobo-coord serve --help`), and readable views for
-- reporting with sqlite3: v_jobs, v_node_stats, v_queue, v_node_metrics_minute.

CREATE TABLE node_metrics_minute (
    node_id            TEXT NOT NULL REFERENCES nodes (node_id) ON DELETE CASCADE,
    minute             INTEGER NOT NULL,      -- start of the minute, ms since the epoch
    samples            INTEGER NOT NULL,      -- raw heartbeats folded in
    cpu_percent_avg    REAL NOT NULL,
    cpu_percent_max    REAL NOT NULL,
    mem_used_bytes_avg INTEGER NOT NULL,
    mem_total_bytes    INTEGER NOT NULL,
    load_1_avg         REAL NOT NULL,
    disk_used_bytes    INTEGER NOT NULL,
    disk_total_bytes   INTEGER NOT NULL,
    running_avg        REAL NOT NULL,
    running_max        INTEGER NOT NULL,
    PRIMARY KEY (node_id, minute)
) STRICT, WITHOUT ROWID;

CREATE INDEX node_metrics_minute_at ON node_metrics_minute (minute);

CREATE VIEW v_node_metrics_minute AS
SELECT
    node_id,
    strftime('%Y-%m-%d %H:%M', minute / 1000.0, 'unixepoch')     AS minute,
    samples,
    round(cpu_percent_avg, 1)                                     AS cpu_pct,
    round(cpu_percent_max, 1)                                     AS cpu_pct_max,
    round(100.0 * mem_used_bytes_avg / nullif(mem_total_bytes, 0), 1) AS mem_pct,
    round(load_1_avg, 2)                                          AS load_1,
    round(running_avg, 2)                                         AS running,
    running_max
FROM node_metrics_minute;

-- One row per job: its node and region, times, durations, attempts, and why
-- it waits or went where it went. Confidential jobs show `(confidential)`:
-- their sealed `request`/`result` are never read here.
DROP VIEW v_jobs;
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
    strftime('%Y-%m-%d %H:%M:%f', j.created_at / 1000.0, 'unixepoch')    AS created,
    strftime('%Y-%m-%d %H:%M:%f', j.first_started_at / 1000.0, 'unixepoch') AS started,
    strftime('%Y-%m-%d %H:%M:%f', j.finished_at / 1000.0, 'unixepoch')   AS finished,
    j.first_started_at - j.created_at                                    AS wait_ms,
    CASE WHEN j.finished_at IS NOT NULL THEN j.finished_at - j.last_started_at END AS run_ms,
    CASE WHEN j.finished_at IS NOT NULL THEN j.finished_at - j.created_at END AS total_ms,
    CASE WHEN j.confidential = 0 THEN json_extract(j.result, '$.usage.duration_ms') END AS llm_ms,
    CASE WHEN j.confidential = 0 THEN json_extract(j.result, '$.usage.completion_tokens') END AS completion_tokens,
    j.last_error,
    j.queue_reason,
    j.route_reason,
    CASE WHEN j.confidential = 1 THEN '(confidential)'
         ELSE substr(json_extract(j.result, '$.text'), 1, 80) END          AS result_head
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

-- Per node: jobs done, success rate, response time (lease to report, as the
-- coordinator saw it) mean/p50/p95, LLM tokens per second, last seen, and
-- the latest heartbeat's CPU and memory.
DROP VIEW v_node_stats;
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
           round(avg(response_ms))                                      AS mean_response_ms,
           min(CASE WHEN rank_ms >= 0.50 * n THEN response_ms END)      AS p50_response_ms,
           min(CASE WHEN rank_ms >= 0.95 * n THEN response_ms END)      AS p95_response_ms,
           round(avg(duration_ms))                                      AS mean_llm_ms,
           round(1000.0 * sum(completion_tokens) / nullif(sum(duration_ms), 0), 1) AS tokens_per_s
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
         THEN round(100.0 * n.jobs_succeeded / (n.jobs_succeeded + n.jobs_failed), 1) END AS success_pct,
    p.mean_response_ms,
    p.p50_response_ms,
    p.p95_response_ms,
    p.mean_llm_ms,
    p.tokens_per_s,
    n.rtt_ms,
    strftime('%Y-%m-%d %H:%M:%S', n.last_heartbeat_at / 1000.0, 'unixepoch') AS last_seen,
    round(((julianday('now') - 2440587.5) * 86400000.0 - n.last_heartbeat_at) / 1000.0, 1) AS seen_s_ago,
    round(m.cpu_percent, 1)                                            AS cpu_pct,
    round(100.0 * m.mem_used_bytes / nullif(m.mem_total_bytes, 0), 1)  AS mem_pct,
    m.load_1
FROM nodes n
LEFT JOIN per_node p ON p.node_id = n.node_id
LEFT JOIN node_metrics m
  ON m.node_id = n.node_id
 AND m.at = (SELECT max(at) FROM node_metrics WHERE node_id = n.node_id);

-- The queue: jobs not finished, by state, kind and priority, with the
-- oldest one's age (queued: since ready; scheduled: since submitted;
-- leased: since leased).
CREATE VIEW v_queue AS
SELECT
    state,
    kind,
    priority,
    count(*)                                                           AS jobs,
    strftime('%Y-%m-%d %H:%M:%S',
             min(CASE state WHEN 'queued' THEN ready_at WHEN 'scheduled' THEN created_at ELSE updated_at END) / 1000.0,
             'unixepoch')                                              AS oldest_since,
    round(((julianday('now') - 2440587.5) * 86400000.0
           - min(CASE state WHEN 'queued' THEN ready_at WHEN 'scheduled' THEN created_at ELSE updated_at END)) / 1000.0, 1) AS oldest_age_s,
    strftime('%Y-%m-%d %H:%M:%S', min(CASE WHEN state = 'scheduled' THEN run_at END) / 1000.0, 'unixepoch') AS next_run
FROM jobs
WHERE state IN ('scheduled', 'queued', 'leased')
GROUP BY state, kind, priority
ORDER BY CASE state WHEN 'queued' THEN 0 WHEN 'scheduled' THEN 1 ELSE 2 END, kind, priority DESC;
