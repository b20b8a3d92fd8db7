-- CPU, memory and running jobs per node and minute over the last hour (the
-- per-minute rollups of heartbeat metrics; the current minute is not folded
-- yet, so the newest raw heartbeat is shown too).
-- sqlite3 -readonly -column -header kobo-data/kobo.db < sql/queries/node_metrics_last_hour.sql
SELECT node_id, minute, samples, cpu_pct, cpu_pct_max, mem_pct, running, running_max
FROM v_node_metrics_minute
WHERE minute >= strftime('%Y-%m-%d %H:%M', 'now', '-1 hour')
UNION ALL
SELECT m.node_id,
       strftime('%Y-%m-%d %H:%M:%S', m.at / 1000.0, 'unixepoch') || ' (latest)',
       1, round(m.cpu_percent, 1), round(m.cpu_percent, 1),
       round(100.0 * m.mem_used_bytes / nullif(m.mem_total_bytes, 0), 1), m.running, m.running
FROM node_metrics m
WHERE m.at = (SELECT max(at) FROM node_metrics x WHERE x.node_id = m.node_id)
ORDER BY 1, 2;
