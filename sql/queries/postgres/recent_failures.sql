-- The last 20 failed or lost attempts, with their errors.
-- psql -X "$DATABASE_URL" -f sql/queries/postgres/recent_failures.sql
SELECT a.job_id,
       j.kind,
       a.node_id,
       a.attempt,
       a.outcome,
       to_char(to_timestamp(a.finished_at / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS at,
       substr(a.error, 1, 100) AS error
FROM job_attempts a
JOIN jobs j ON j.id = a.job_id
WHERE a.outcome NOT IN ('running', 'succeeded')
ORDER BY a.finished_at DESC
LIMIT 20;
