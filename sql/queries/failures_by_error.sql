-- Failed attempts grouped by their error (first 80 characters): how often,
-- on which nodes and kinds, and when last.
-- sqlite3 -readonly -column -header kobo-data/kobo.db < sql/queries/failures_by_error.sql
SELECT substr(coalesce(a.error, a.outcome), 1, 80)                        AS error,
       a.outcome,
       count(*)                                                           AS attempts,
       count(DISTINCT a.job_id)                                           AS jobs,
       group_concat(DISTINCT a.node_id)                                   AS nodes,
       group_concat(DISTINCT j.kind)                                      AS kinds,
       strftime('%Y-%m-%d %H:%M:%S', max(a.finished_at) / 1000.0, 'unixepoch') AS last_at
FROM job_attempts a
JOIN jobs j ON j.id = a.job_id
WHERE a.outcome NOT IN ('running', 'succeeded')
GROUP BY 1, a.outcome
ORDER BY attempts DESC
LIMIT 30;
