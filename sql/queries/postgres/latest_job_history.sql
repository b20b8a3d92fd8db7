-- Every state change of the newest job (edit the id to look at another).
SELECT * FROM v_job_events
WHERE job_id = (SELECT max(id) FROM jobs)
ORDER BY at;
