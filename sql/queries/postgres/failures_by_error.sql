-- Failed attempts grouped by their error (first 80 characters): how often,
-- on which nodes and kinds, and when last.
-- psql -X "$DATABASE_URL" -f sql/queries/postgres/failures_by_error.sql
SELECT substr(coalesce(a.error, a.outcome), 1, 80)                        AS error,
       a.outcome,
       count(*)                                                           AS attempts,
       count(DISTINCT a.job_id)                                           AS jobs,
       string_agg(DISTINCT a.node_id, ',')                                AS nodes,
       string_agg(DISTINCT j.kind, ',')                                   AS kinds,
       to_char(to_timestamp(max(a.finished_at) / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS last_at
FROM job_attempts a
JOIN jobs j ON j.id = a.job_id
WHERE a.outcome NOT IN ('running', 'succeeded')
GROUP BY 1, a.outcome
ORDER BY attempts DESC
LIMIT 30;
