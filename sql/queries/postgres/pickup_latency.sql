-- Time from a job becoming queued to a node leasing it, per kind (ms).
WITH waits AS (
    SELECT j.kind,
           lease.at - ready.at AS wait_ms
    FROM job_events lease
    JOIN job_events ready
      ON ready.job_id = lease.job_id
     AND ready.id = (SELECT max(e.id) FROM job_events e
                     WHERE e.job_id = lease.job_id AND e.id < lease.id AND e.to_state = 'queued')
    JOIN jobs j ON j.id = lease.job_id
    WHERE lease.to_state = 'leased'
)
SELECT kind, count(*) AS leases, min(wait_ms) AS min_ms, round(avg(wait_ms), 1) AS mean_ms, max(wait_ms) AS max_ms
FROM waits
GROUP BY kind
ORDER BY kind;
