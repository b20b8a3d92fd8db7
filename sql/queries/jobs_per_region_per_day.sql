-- Finished jobs per day (UTC) and region of the node that ran them.
-- sqlite3 -readonly -column -header kobo-data/kobo.db < sql/queries/jobs_per_region_per_day.sql
SELECT date(j.finished_at / 1000.0, 'unixepoch')   AS day,
       coalesce(n.region, '(none)')                AS region,
       count(*)                                    AS finished,
       sum(j.state = 'succeeded')                  AS succeeded,
       sum(j.state = 'dead')                       AS dead,
       sum(j.state = 'cancelled')                  AS cancelled
FROM jobs j
LEFT JOIN nodes n ON n.node_id = j.node_id
WHERE j.finished_at IS NOT NULL
GROUP BY day, region
ORDER BY day DESC, finished DESC;
