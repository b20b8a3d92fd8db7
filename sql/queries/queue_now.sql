-- The queue now: unfinished jobs by state, kind and priority, and how long
-- the oldest has waited.
-- sqlite3 -readonly -column -header kobo-data/kobo.db < sql/queries/queue_now.sql
SELECT * FROM v_queue;
