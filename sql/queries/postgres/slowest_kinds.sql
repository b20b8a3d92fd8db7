-- Kinds of work from slowest to fastest: mean and worst time from submit to
-- done, mean wait before the first lease, mean LLM time (succeeded jobs).
-- psql -X "$DATABASE_URL" -f sql/queries/postgres/slowest_kinds.sql
SELECT kind,
       count(*)                  AS jobs,
       round(avg(total_ms))      AS mean_total_ms,
       max(total_ms)             AS max_total_ms,
       round(avg(wait_ms))       AS mean_wait_ms,
       round(avg(llm_ms))        AS mean_llm_ms
FROM v_jobs
WHERE state = 'succeeded'
GROUP BY kind
ORDER BY mean_total_ms DESC;
