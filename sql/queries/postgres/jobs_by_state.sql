-- How many jobs are in each state, and the oldest of each.
-- psql -X "$DATABASE_URL" -f sql/queries/postgres/jobs_by_state.sql
SELECT state,
       count(*) AS jobs,
       to_char(to_timestamp(min(created_at) / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS oldest
FROM jobs
GROUP BY state
ORDER BY jobs DESC;
