-- Finished jobs per day (UTC) and region of the node that ran them.
-- psql -X "$DATABASE_URL" -f sql/queries/postgres/jobs_per_region_per_day.sql
SELECT to_char(to_timestamp(j.finished_at / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day,
       coalesce(n.region, '(none)')                        AS region,
       count(*)                                            AS finished,
       count(*) FILTER (WHERE j.state = 'succeeded')       AS succeeded,
       count(*) FILTER (WHERE j.state = 'dead')            AS dead,
       count(*) FILTER (WHERE j.state = 'cancelled')       AS cancelled
FROM jobs j
LEFT JOIN nodes n ON n.node_id = j.node_id
WHERE j.finished_at IS NOT NULL
GROUP BY 1, 2
ORDER BY day DESC, finished DESC;
