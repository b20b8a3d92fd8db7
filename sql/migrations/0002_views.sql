-- Readable views for people using sqlite3: dates instead of milliseconds.

CREATE VIEW v_jobs AS
SELECT
    id,
    state,
    kind,
    model,
    priority,
    attempts || '/' || max_attempts                              AS attempts,
    node_id,
    strftime('%Y-%m-%d %H:%M:%f', created_at / 1000.0, 'unixepoch') AS created,
    strftime('%Y-%m-%d %H:%M:%f', finished_at / 1000.0, 'unixepoch') AS finished,
    CASE WHEN finished_at IS NOT NULL THEN finished_at - created_at END AS total_ms,
    json_extract(result, '$.usage.duration_ms')                  AS llm_ms,
    json_extract(result, '$.usage.completion_tokens')            AS completion_tokens,
    last_error,
    queue_reason,
    CASE WHEN confidential = 1 THEN '(confidential)'
         ELSE substr(json_extract(result, '$.text'), 1, 80) END  AS result_head
FROM jobs;

CREATE VIEW v_job_events AS
SELECT
    e.job_id,
    strftime('%Y-%m-%d %H:%M:%f', e.at / 1000.0, 'unixepoch') AS at,
    e.from_state,
    e.to_state,
    e.node_id,
    e.attempt,
    e.detail
FROM job_events e;

CREATE VIEW v_node_stats AS
SELECT
    n.node_id,
    n.region,
    n.status,
    n.max_workers,
    (SELECT count(*) FROM jobs j WHERE j.state = 'leased' AND j.node_id = n.node_id) AS running,
    n.jobs_succeeded,
    n.jobs_failed,
    CASE WHEN n.jobs_succeeded + n.jobs_failed > 0
         THEN round(100.0 * n.jobs_succeeded / (n.jobs_succeeded + n.jobs_failed), 1) END AS success_pct,
    (SELECT round(avg(a.duration_ms)) FROM job_attempts a
      WHERE a.node_id = n.node_id AND a.outcome = 'succeeded') AS mean_llm_ms,
    n.rtt_ms,
    strftime('%Y-%m-%d %H:%M:%f', n.last_heartbeat_at / 1000.0, 'unixepoch') AS last_heartbeat,
    m.cpu_percent,
    round(100.0 * m.mem_used_bytes / nullif(m.mem_total_bytes, 0), 1) AS mem_pct,
    m.load_1
FROM nodes n
LEFT JOIN node_metrics m
  ON m.node_id = n.node_id
 AND m.at = (SELECT max(at) FROM node_metrics WHERE node_id = n.node_id);
