-- The last 20 failed or lost attempts, with their errors.
SELECT a.job_id,
       j.kind,
       a.node_id,
       a.attempt,
       a.outcome,
       strftime('%Y-%m-%d %H:%M:%S', a.finished_at / 1000.0, 'unixepoch') AS at,
       substr(a.error, 1, 100) AS error
FROM job_attempts a
JOIN jobs j ON j.id = a.job_id
WHERE a.outcome NOT IN ('running', 'succeeded')
ORDER BY a.finished_at DESC
LIMIT 20;
