-- CPU, memory and running jobs per node and minute over the last hour (the
-- per-minute rollups of heartbeat metrics; the current minute is not folded
-- yet, so the newest raw heartbeat is shown too).
-- psql -X "$DATABASE_URL" -f sql/queries/postgres/node_metrics_last_hour.sql
SELECT node_id, minute, samples, cpu_pct, cpu_pct_max, mem_pct, running, running_max
FROM v_node_metrics_minute
WHERE minute >= to_char((now() - interval '1 hour') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')
UNION ALL
SELECT m.node_id,
       to_char(to_timestamp(m.at / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' (latest)',
       1,
       CAST(round(CAST(m.cpu_percent AS NUMERIC), 1) AS DOUBLE PRECISION),
       CAST(round(CAST(m.cpu_percent AS NUMERIC), 1) AS DOUBLE PRECISION),
       CAST(round(100.0 * m.mem_used_bytes / nullif(m.mem_total_bytes, 0), 1) AS DOUBLE PRECISION),
       m.running, m.running
FROM node_metrics m
WHERE m.at = (SELECT max(at) FROM node_metrics x WHERE x.node_id = m.node_id)
ORDER BY 1, 2;
