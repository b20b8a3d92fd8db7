-- The queue now: unfinished jobs by state, kind and priority, and how long
-- the oldest has waited.
-- psql -X "$DATABASE_URL" -f sql/queries/postgres/queue_now.sql
SELECT * FROM v_queue;
