-- The busiest nodes in the last hour: attempts finished, how many succeeded,
-- mean response time (lease to report) and tokens per second.
-- psql -X "$DATABASE_URL" -f sql/queries/postgres/busiest_nodes_this_hour.sql
SELECT a.node_id,
       n.region,
       count(*)                                                            AS attempts,
       count(*) FILTER (WHERE a.outcome = 'succeeded')                     AS succeeded,
       round(100.0 * count(*) FILTER (WHERE a.outcome = 'succeeded') / count(*), 1) AS success_pct,
       round(avg(CASE WHEN a.outcome = 'succeeded' THEN a.finished_at - a.started_at END)) AS mean_response_ms,
       round(1000.0 * sum(a.completion_tokens) / nullif(sum(a.duration_ms), 0), 1) AS tokens_per_s
FROM job_attempts a
LEFT JOIN nodes n ON n.node_id = a.node_id
WHERE a.finished_at >= extract(epoch FROM now()) * 1000 - 3600 * 1000
GROUP BY a.node_id, n.region
ORDER BY attempts DESC, a.node_id
LIMIT 20;
