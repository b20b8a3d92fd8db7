//! Observability in the store: upkeep of the node metrics time series
//! (per-minute downsampling and retention), and the reads behind
//! `/metrics`, `/v1/status` and the dashboard. None of these reads touch a
//! job's `request` or `result`.

use std::time::Duration;

use kobo_protocol::{JobState, JobSummary, NodeRecent, QueueRow};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{StoreError, parse_state};

pub const SELECT_LAST_ROLLUP: &str = "SELECT max(minute) FROM node_metrics_minute";
pub const SELECT_FIRST_RAW_FROM: &str = "SELECT min(at) FROM node_metrics WHERE at >= ?1";
pub const ROLLUP_METRICS: &str = "INSERT OR REPLACE INTO node_metrics_minute (node_id, minute, samples, cpu_percent_avg, cpu_percent_max, mem_used_bytes_avg, mem_total_bytes, load_1_avg, disk_used_bytes, disk_total_bytes, running_avg, running_max) SELECT node_id, (at / 60000) * 60000, count(*), avg(cpu_percent), max(cpu_percent), CAST(avg(mem_used_bytes) AS INTEGER), max(mem_total_bytes), avg(load_1), max(disk_used_bytes), max(disk_total_bytes), avg(running), max(running) FROM node_metrics WHERE at >= ?1 AND at < ?2 GROUP BY node_id, at / 60000";
pub const PRUNE_METRICS_MINUTE: &str = "DELETE FROM node_metrics_minute WHERE (node_id, minute) IN (SELECT node_id, minute FROM node_metrics_minute WHERE minute < ?1 LIMIT 5000)";
pub const SELECT_QUEUE_SUMMARY: &str = "SELECT state, kind, count(*), min(CASE state WHEN 'queued' THEN ready_at WHEN 'scheduled' THEN created_at ELSE updated_at END) FROM jobs WHERE state IN ('scheduled', 'queued', 'leased') GROUP BY state, kind ORDER BY state, kind";
pub const SELECT_LATEST_JOBS: &str = "SELECT id, state, kind, model, priority, node_id, attempts, max_attempts, created_at, updated_at, finished_at, last_error, queue_reason, route_reason, confidential FROM jobs ORDER BY id DESC LIMIT ?1";
pub const SELECT_NODE_RECENT: &str = "SELECT count(*), coalesce(sum(outcome = 'succeeded'), 0), coalesce(sum(outcome NOT IN ('running', 'succeeded', 'cancelled')), 0), avg(CASE WHEN outcome = 'succeeded' THEN finished_at - started_at END), sum(CASE WHEN outcome = 'succeeded' THEN completion_tokens END), sum(CASE WHEN outcome = 'succeeded' THEN duration_ms END) FROM job_attempts WHERE node_id = ?1 AND started_at >= ?2 AND outcome <> 'running'";
pub const SELECT_JOB_COUNTS: &str = "SELECT kind, state, count(*) FROM jobs GROUP BY kind, state";
pub const SELECT_LAST_EVENT_ID: &str = "SELECT coalesce(max(id), 0) FROM job_events";
pub const SELECT_EVENTS_AFTER: &str = "SELECT e.id, e.at, e.from_state, e.to_state, j.kind, CASE WHEN e.to_state = 'leased' THEN (SELECT max(q.at) FROM job_events q WHERE q.job_id = e.job_id AND q.id < e.id AND q.to_state = 'queued') WHEN e.from_state = 'leased' THEN (SELECT max(q.at) FROM job_events q WHERE q.job_id = e.job_id AND q.id < e.id AND q.to_state = 'leased') END FROM job_events e JOIN jobs j ON j.id = e.job_id WHERE e.id > ?1 ORDER BY e.id LIMIT ?2";

const MINUTE_MS: i64 = 60_000;
/// Most minutes one upkeep folds: bounds the writer's time per tick when a
/// backlog exists (it catches up over the next ticks).
const MAX_ROLLUP_MINUTES: i64 = 60;

/// How long node metrics are kept: raw heartbeats, then per-minute rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsRetention {
    pub raw: Duration,
    pub minute: Duration,
}

/// Folds every completed minute of raw node metrics into
/// `node_metrics_minute` (once; a bounded number per call), then deletes raw
/// rows older than `retention.raw` that are folded already and per-minute
/// rows older than `retention.minute` (each a bounded batch). Cheap when
/// nothing is due: two index lookups.
pub fn maintain_metrics(
    tx: &Transaction<'_>,
    now: i64,
    retention: &MetricsRetention,
) -> Result<(), StoreError> {
    let current_minute = now - now.rem_euclid(MINUTE_MS);
    let last: Option<i64> = tx
        .prepare_cached(SELECT_LAST_ROLLUP)?
        .query_row([], |r| r.get(0))?;
    let from = last.map_or(i64::MIN, |m| m + MINUTE_MS);
    let first: Option<i64> = tx
        .prepare_cached(SELECT_FIRST_RAW_FROM)?
        .query_row([from], |r| r.get(0))
        .optional()?
        .flatten();
    let mut folded_until = from;
    if let Some(first) = first {
        let start = first - first.rem_euclid(MINUTE_MS);
        if start < current_minute {
            let end = current_minute.min(start + MAX_ROLLUP_MINUTES * MINUTE_MS);
            tx.prepare_cached(ROLLUP_METRICS)?
                .execute(params![start, end])?;
            folded_until = end;
        } else {
            folded_until = start;
        }
    } else if last.is_some() {
        folded_until = current_minute;
    }
    let raw_before = (now - retention.raw.as_millis() as i64).min(folded_until);
    super::prune_metrics(tx, raw_before)?;
    let minute_before = now - retention.minute.as_millis() as i64;
    tx.prepare_cached(PRUNE_METRICS_MINUTE)?
        .execute([minute_before])?;
    Ok(())
}

/// Unfinished jobs by state and kind.
pub fn queue_summary(conn: &Connection) -> Result<Vec<QueueRow>, StoreError> {
    let mut stmt = conn.prepare_cached(SELECT_QUEUE_SUMMARY)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(QueueRow {
            state: parse_state(&r.get::<_, String>(0)?)?,
            kind: r.get(1)?,
            jobs: r.get::<_, i64>(2)?.max(0) as u64,
            oldest_at: r.get(3)?,
        });
    }
    Ok(out)
}

/// The newest `limit` jobs, newest first, without prompts or results.
pub fn latest_jobs(conn: &Connection, limit: u32) -> Result<Vec<JobSummary>, StoreError> {
    let mut stmt = conn.prepare_cached(SELECT_LATEST_JOBS)?;
    let mut rows = stmt.query([limit])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(JobSummary {
            id: r.get(0)?,
            state: parse_state(&r.get::<_, String>(1)?)?,
            kind: r.get(2)?,
            model: r.get(3)?,
            priority: r.get(4)?,
            node_id: r.get(5)?,
            attempts: r.get(6)?,
            max_attempts: r.get(7)?,
            created_at: r.get(8)?,
            updated_at: r.get(9)?,
            finished_at: r.get(10)?,
            last_error: r.get(11)?,
            queue_reason: r.get(12)?,
            route_reason: super::parse_route_reason(r.get(13)?),
            confidential: r.get(14)?,
        });
    }
    Ok(out)
}

/// What `node_id` did in the attempts started since `since` (one index
/// range on `job_attempts (node_id, started_at)`).
pub fn node_recent(
    conn: &Connection,
    node_id: &str,
    since: i64,
    window_ms: u64,
) -> Result<NodeRecent, StoreError> {
    let recent =
        conn.prepare_cached(SELECT_NODE_RECENT)?
            .query_row(params![node_id, since], |r| {
                let tokens: Option<i64> = r.get(4)?;
                let llm_ms: Option<i64> = r.get(5)?;
                Ok(NodeRecent {
                    window_ms,
                    attempts: r.get::<_, i64>(0)?.max(0) as u64,
                    succeeded: r.get::<_, i64>(1)?.max(0) as u64,
                    failed: r.get::<_, i64>(2)?.max(0) as u64,
                    mean_response_ms: r.get(3)?,
                    tokens_per_s: match (tokens, llm_ms) {
                        (Some(tokens), Some(ms)) if ms > 0 => {
                            Some(1000.0 * tokens as f64 / ms as f64)
                        }
                        _ => None,
                    },
                })
            })?;
    Ok(recent)
}

/// Jobs counted by kind and state.
pub type JobCounts = Vec<(String, JobState, u64)>;

/// Every job counted by kind and state, and the newest event id, read in
/// one snapshot: where tailing `job_events` starts.
pub fn job_counts(conn: &Connection) -> Result<(JobCounts, i64), StoreError> {
    let tx = conn.unchecked_transaction()?;
    let mut counts = Vec::new();
    {
        let mut stmt = tx.prepare_cached(SELECT_JOB_COUNTS)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            counts.push((
                r.get(0)?,
                parse_state(&r.get::<_, String>(1)?)?,
                r.get::<_, i64>(2)?.max(0) as u64,
            ));
        }
    }
    let last: i64 = tx
        .prepare_cached(SELECT_LAST_EVENT_ID)?
        .query_row([], |r| r.get(0))?;
    tx.finish()?;
    Ok((counts, last))
}

/// One state change read from `job_events`, with the time it measures from.
#[derive(Debug, Clone, PartialEq)]
pub struct TailEvent {
    pub id: i64,
    pub at: i64,
    pub from: Option<JobState>,
    pub to: JobState,
    pub kind: String,
    /// Into `leased`: when the job last became queued (pickup latency).
    /// Out of `leased`: when it was leased (run time of the attempt).
    pub since: Option<i64>,
}

/// Up to `limit` events after `after_id`, oldest first.
pub fn events_after(
    conn: &Connection,
    after_id: i64,
    limit: u32,
) -> Result<Vec<TailEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(SELECT_EVENTS_AFTER)?;
    let mut rows = stmt.query(params![after_id, limit])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(TailEvent {
            id: r.get(0)?,
            at: r.get(1)?,
            from: r
                .get::<_, Option<String>>(2)?
                .map(|s| parse_state(&s))
                .transpose()?,
            to: parse_state(&r.get::<_, String>(3)?)?,
            kind: r.get(4)?,
            since: r.get(5)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{migrate, open_connection};

    const HOUR_MS: i64 = 3_600_000;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("dir");
        let mut conn = open_connection(&dir.path().join("kobo.db")).expect("open");
        migrate(&mut conn).expect("migrate");
        conn.execute_batch(
            "INSERT INTO nodes (node_id, instance_id, region, capabilities, max_workers, backend, status, registered_at, last_heartbeat_at) VALUES ('n1', 'i', 'eu-west-2', '[]', 4, 'sim', 'active', 0, 0)",
        )
        .expect("node");
        (dir, conn)
    }

    fn raw(conn: &Connection, at: i64, cpu: f64, running: i64) {
        conn.execute(
            "INSERT INTO node_metrics (node_id, at, cpu_percent, mem_used_bytes, mem_total_bytes, load_1, load_5, load_15, disk_used_bytes, disk_total_bytes, running) VALUES ('n1', ?1, ?2, 100, 1000, 0.5, 0.5, 0.5, 10, 100, ?3)",
            params![at, cpu, running],
        )
        .expect("raw row");
    }

    fn count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .expect("count")
    }

    fn maintain(conn: &mut Connection, now: i64, retention: &MetricsRetention) {
        let tx = conn.transaction().expect("tx");
        maintain_metrics(&tx, now, retention).expect("maintain");
        tx.commit().expect("commit");
    }

    #[test]
    fn completed_minutes_are_folded_once_and_old_rows_pruned() {
        let (_dir, mut conn) = db();
        let retention = MetricsRetention {
            raw: Duration::from_secs(3600),
            minute: Duration::from_secs(3 * 3600),
        };
        let base = 100 * HOUR_MS;
        // Minute 0: three samples; minute 1: one; minute 2 (current): one.
        raw(&conn, base, 10.0, 1);
        raw(&conn, base + 20_000, 20.0, 3);
        raw(&conn, base + 40_000, 30.0, 2);
        raw(&conn, base + 61_000, 50.0, 0);
        raw(&conn, base + 121_000, 90.0, 4);
        maintain(&mut conn, base + 125_000, &retention);
        let rows: Vec<(i64, i64, f64, f64, i64)> = conn
            .prepare("SELECT minute, samples, cpu_percent_avg, cpu_percent_max, running_max FROM node_metrics_minute ORDER BY minute")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            rows,
            vec![(base, 3, 20.0, 30.0, 3), (base + 60_000, 1, 50.0, 50.0, 0)],
            "the current minute is not folded yet"
        );
        assert_eq!(
            count(&conn, "node_metrics"),
            5,
            "raw rows are younger than a day"
        );

        // Later: the last minute is folded, raw rows past retention go,
        // per-minute rows stay.
        maintain(&mut conn, base + 2 * HOUR_MS, &retention);
        assert_eq!(count(&conn, "node_metrics_minute"), 3);
        assert_eq!(count(&conn, "node_metrics"), 0);
        maintain(&mut conn, base + 2 * HOUR_MS + 1, &retention);
        assert_eq!(
            count(&conn, "node_metrics_minute"),
            3,
            "folding is idempotent"
        );

        // Past the per-minute retention they go too.
        maintain(&mut conn, base + 4 * HOUR_MS, &retention);
        assert_eq!(count(&conn, "node_metrics_minute"), 0);
        let readable: i64 = conn
            .query_row("SELECT count(*) FROM v_node_metrics_minute", [], |r| {
                r.get(0)
            })
            .expect("view");
        assert_eq!(readable, 0);
    }

    #[test]
    fn a_gap_in_the_series_is_skipped_not_rescanned() {
        let (_dir, mut conn) = db();
        let retention = MetricsRetention {
            raw: Duration::from_secs(30 * 24 * 3600),
            minute: Duration::from_secs(60 * 24 * 3600),
        };
        let base = 100 * HOUR_MS;
        raw(&conn, base, 10.0, 0);
        raw(&conn, base + 10 * HOUR_MS, 20.0, 0);
        // Two upkeeps fold both minutes, ten hours apart.
        maintain(&mut conn, base + 11 * HOUR_MS, &retention);
        maintain(&mut conn, base + 11 * HOUR_MS, &retention);
        assert_eq!(count(&conn, "node_metrics_minute"), 2);
    }
}
