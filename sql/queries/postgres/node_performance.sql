-- Per node: attempts, success rate, mean LLM time and tokens per second.
-- psql -X "$DATABASE_URL" -f sql/queries/postgres/node_performance.sql
SELECT a.node_id,
       count(*)                                                   AS attempts,
       count(*) FILTER (WHERE a.outcome = 'succeeded')            AS succeeded,
       round(100.0 * count(*) FILTER (WHERE a.outcome = 'succeeded') / count(*), 1) AS success_pct,
       round(avg(CASE WHEN a.outcome = 'succeeded' THEN a.duration_ms END)) AS mean_llm_ms,
       round(1000.0 * sum(a.completion_tokens) / nullif(sum(a.duration_ms), 0), 1) AS tokens_per_s
FROM job_attempts a
GROUP BY a.node_id
ORDER BY a.node_id;
