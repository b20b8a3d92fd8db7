-- How many jobs are in each state, and the oldest of each.
-- sqlite3 -readonly -column -header kobo.db < sql/queries/jobs_by_state.sql
SELECT state,
       count(*) AS jobs,
       strftime('%Y-%m-%d %H:%M:%S', min(created_at) / 1000.0, 'unixepoch') AS oldest
FROM jobs
GROUP BY state
ORDER BY jobs DESC;
