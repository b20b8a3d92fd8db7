//! Observability in the store: upkeep of the node metrics time series
//! (per-minute downsampling and retention), and the reads behind
//! `/metrics`, `/v1/status` and the dashboard. None of these reads touch a
//! job's `request` or `result`.

use std::time::Duration;

use kobo_protocol::{JobState, JobSummary, NodeRecent, QueueRow};

use super::sql::{Db, Row, args};
use super::{StoreError, parse_state};

pub const SELECT_LAST_ROLLUP: &str = "SELECT max(minute) FROM node_metrics_minute";
pub const SELECT_FIRST_RAW_FROM: &str = "SELECT min(at) FROM node_metrics WHERE at >= ?1";
pub const ROLLUP_METRICS: &str = "INSERT OR REPLACE INTO node_metrics_minute (node_id, minute, samples, cpu_percent_avg, cpu_percent_max, mem_used_bytes_avg, mem_total_bytes, load_1_avg, disk_used_bytes, disk_total_bytes, running_avg, running_max) SELECT node_id, (at / 60000) * 60000, count(*), avg(cpu_percent), max(cpu_percent), CAST(avg(mem_used_bytes) AS INTEGER), max(mem_total_bytes), avg(load_1), max(disk_used_bytes), max(disk_total_bytes), avg(running), max(running) FROM node_metrics WHERE at >= ?1 AND at < ?2 GROUP BY node_id, at / 60000";
/// PostgreSQL has no `INSERT OR REPLACE`; its `avg` of `bigint` is
/// `numeric` (truncated to an integer as SQLite's `CAST` does).
pub const ROLLUP_METRICS_PG: &str = "INSERT INTO node_metrics_minute (node_id, minute, samples, cpu_percent_avg, cpu_percent_max, mem_used_bytes_avg, mem_total_bytes, load_1_avg, disk_used_bytes, disk_total_bytes, running_avg, running_max) SELECT node_id, (at / 60000) * 60000, count(*), avg(cpu_percent), max(cpu_percent), CAST(trunc(avg(mem_used_bytes)) AS BIGINT), max(mem_total_bytes), avg(load_1), max(disk_used_bytes), max(disk_total_bytes), CAST(avg(running) AS DOUBLE PRECISION), max(running) FROM node_metrics WHERE at >= ?1 AND at < ?2 GROUP BY node_id, at / 60000 ON CONFLICT (node_id, minute) DO UPDATE SET samples = excluded.samples, cpu_percent_avg = excluded.cpu_percent_avg, cpu_percent_max = excluded.cpu_percent_max, mem_used_bytes_avg = excluded.mem_used_bytes_avg, mem_total_bytes = excluded.mem_total_bytes, load_1_avg = excluded.load_1_avg, disk_used_bytes = excluded.disk_used_bytes, disk_total_bytes = excluded.disk_total_bytes, running_avg = excluded.running_avg, running_max = excluded.running_max";
pub const PRUNE_METRICS_MINUTE: &str = "DELETE FROM node_metrics_minute WHERE (node_id, minute) IN (SELECT node_id, minute FROM node_metrics_minute WHERE minute < ?1 LIMIT 5000)";
pub const SELECT_QUEUE_SUMMARY: &str = "SELECT state, kind, count(*), min(CASE state WHEN 'queued' THEN ready_at WHEN 'scheduled' THEN created_at ELSE updated_at END) FROM jobs WHERE state IN ('scheduled', 'queued', 'leased') GROUP BY state, kind ORDER BY state, kind";
pub const SELECT_LATEST_JOBS: &str = "SELECT id, state, kind, model, priority, node_id, attempts, max_attempts, created_at, updated_at, finished_at, last_error, queue_reason, route_reason, confidential FROM jobs ORDER BY id DESC LIMIT ?1";
pub const SELECT_NODE_RECENT: &str = "SELECT count(*), coalesce(sum(a.outcome = 'succeeded'), 0), coalesce(sum(a.outcome NOT IN ('running', 'succeeded', 'cancelled')), 0), avg(CASE WHEN a.outcome = 'succeeded' THEN a.finished_at - a.started_at END), sum(CASE WHEN a.outcome = 'succeeded' THEN a.completion_tokens END), sum(CASE WHEN a.outcome = 'succeeded' THEN a.duration_ms END), coalesce(sum(j.gateway IS NOT NULL), 0), sum(CASE WHEN a.outcome = 'succeeded' AND j.gateway IS NOT NULL THEN a.completion_tokens END), sum(CASE WHEN a.outcome = 'succeeded' AND j.gateway IS NOT NULL THEN a.finished_at - a.started_at END) FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE a.node_id = ?1 AND a.started_at >= ?2 AND a.outcome <> 'running'";
/// PostgreSQL counts with `FILTER` (a boolean does not sum), and its `sum`
/// and `avg` of `bigint` are `numeric`.
pub const SELECT_NODE_RECENT_PG: &str = "SELECT count(*), count(*) FILTER (WHERE a.outcome = 'succeeded'), count(*) FILTER (WHERE a.outcome NOT IN ('running', 'succeeded', 'cancelled')), CAST(avg(CASE WHEN a.outcome = 'succeeded' THEN a.finished_at - a.started_at END) AS DOUBLE PRECISION), CAST(sum(CASE WHEN a.outcome = 'succeeded' THEN a.completion_tokens END) AS BIGINT), CAST(sum(CASE WHEN a.outcome = 'succeeded' THEN a.duration_ms END) AS BIGINT), count(*) FILTER (WHERE j.gateway IS NOT NULL), CAST(sum(CASE WHEN a.outcome = 'succeeded' AND j.gateway IS NOT NULL THEN a.completion_tokens END) AS BIGINT), CAST(sum(CASE WHEN a.outcome = 'succeeded' AND j.gateway IS NOT NULL THEN a.finished_at - a.started_at END) AS BIGINT) FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE a.node_id = ?1 AND a.started_at >= ?2 AND a.outcome <> 'running'";
/// Jobs by kind and state, and then the newest event id (the row whose
/// kind is NULL), in one statement: one snapshot on either backend, where
/// two statements on PostgreSQL (read committed) would see two.
pub const SELECT_JOB_COUNTS_AND_LAST_EVENT: &str = "SELECT kind, state, count(*) FROM jobs GROUP BY kind, state UNION ALL SELECT NULL, NULL, coalesce(max(id), 0) FROM job_events";
pub const SELECT_EVENTS_AFTER: &str = "SELECT e.id, e.at, e.from_state, e.to_state, j.kind, CASE WHEN e.to_state = 'leased' THEN (SELECT max(q.at) FROM job_events q WHERE q.job_id = e.job_id AND q.id < e.id AND q.to_state = 'queued') WHEN e.from_state = 'leased' THEN (SELECT max(q.at) FROM job_events q WHERE q.job_id = e.job_id AND q.id < e.id AND q.to_state = 'leased') END, e.node_id, CASE WHEN e.to_state = 'succeeded' THEN (SELECT a.completion_tokens FROM job_attempts a WHERE a.job_id = e.job_id AND a.outcome = 'succeeded') END FROM job_events e JOIN jobs j ON j.id = e.job_id WHERE e.id > ?1 ORDER BY e.id LIMIT ?2";
pub const SELECT_EVENT_AT_FROM: &str =
    "SELECT id, at FROM job_events WHERE id >= ?1 ORDER BY id LIMIT 1";
pub const SELECT_EVENT_ID_RANGE: &str =
    "SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM job_events";
pub const SELECT_USAGE_MINUTES: &str = "SELECT node_id, (minute - ?1) / ?2, sum(cpu_percent_avg * samples), sum(samples * mem_used_bytes_avg * 100.0 / nullif(mem_total_bytes, 0)), sum(samples) FROM node_metrics_minute WHERE minute >= ?1 AND minute < ?3 GROUP BY 1, 2";
/// PostgreSQL's `100.0` is `numeric`, and so is its `sum` of `bigint`.
pub const SELECT_USAGE_MINUTES_PG: &str = "SELECT node_id, (minute - ?1) / ?2, sum(cpu_percent_avg * samples), CAST(sum(samples * mem_used_bytes_avg * 100.0 / nullif(mem_total_bytes, 0)) AS DOUBLE PRECISION), CAST(sum(samples) AS BIGINT) FROM node_metrics_minute WHERE minute >= ?1 AND minute < ?3 GROUP BY 1, 2";
pub const SELECT_USAGE_RAW: &str = "SELECT node_id, (at - ?1) / ?2, sum(cpu_percent), sum(mem_used_bytes * 100.0 / nullif(mem_total_bytes, 0)), count(*) FROM node_metrics WHERE at >= ?3 GROUP BY 1, 2";
pub const SELECT_USAGE_RAW_PG: &str = "SELECT node_id, (at - ?1) / ?2, sum(cpu_percent), CAST(sum(mem_used_bytes * 100.0 / nullif(mem_total_bytes, 0)) AS DOUBLE PRECISION), count(*) FROM node_metrics WHERE at >= ?3 GROUP BY 1, 2";

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
    db: &dyn Db,
    now: i64,
    retention: &MetricsRetention,
) -> Result<(), StoreError> {
    let current_minute = now - now.rem_euclid(MINUTE_MS);
    let last: Option<i64> = db.one(SELECT_LAST_ROLLUP, args![], |r| r.get(0))?;
    let from = last.map_or(i64::MIN, |m| m + MINUTE_MS);
    let first: Option<i64> = db
        .optional(SELECT_FIRST_RAW_FROM, args![from], |r| r.get(0))?
        .flatten();
    let mut folded_until = from;
    if let Some(first) = first {
        let start = first - first.rem_euclid(MINUTE_MS);
        if start < current_minute {
            let end = current_minute.min(start + MAX_ROLLUP_MINUTES * MINUTE_MS);
            db.execute(
                db.pick(ROLLUP_METRICS, ROLLUP_METRICS_PG),
                args![start, end],
            )?;
            folded_until = end;
        } else {
            folded_until = start;
        }
    } else if last.is_some() {
        folded_until = current_minute;
    }
    let raw_before = (now - retention.raw.as_millis() as i64).min(folded_until);
    super::prune_metrics(db, raw_before)?;
    let minute_before = now - retention.minute.as_millis() as i64;
    db.execute(PRUNE_METRICS_MINUTE, args![minute_before])?;
    Ok(())
}

/// Unfinished jobs by state and kind.
pub fn queue_summary(db: &dyn Db) -> Result<Vec<QueueRow>, StoreError> {
    db.many(SELECT_QUEUE_SUMMARY, args![], |r| {
        Ok(QueueRow {
            state: parse_state(&r.get::<String>(0)?)?,
            kind: r.get(1)?,
            jobs: r.get::<i64>(2)?.max(0) as u64,
            oldest_at: r.get(3)?,
        })
    })
}

/// The newest `limit` jobs, newest first, without prompts or results.
pub fn latest_jobs(db: &dyn Db, limit: u32) -> Result<Vec<JobSummary>, StoreError> {
    db.many(SELECT_LATEST_JOBS, args![limit], |r| {
        Ok(JobSummary {
            id: r.get(0)?,
            state: parse_state(&r.get::<String>(1)?)?,
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
        })
    })
}

/// What `node_id` did in the attempts started since `since` (one index
/// range on `job_attempts (node_id, started_at)`).
pub fn node_recent(
    db: &dyn Db,
    node_id: &str,
    since: i64,
    window_ms: u64,
) -> Result<NodeRecent, StoreError> {
    db.one(
        db.pick(SELECT_NODE_RECENT, SELECT_NODE_RECENT_PG),
        args![node_id, since],
        |r| {
            let per_s = |tokens: Option<i64>, llm_ms: Option<i64>| match (tokens, llm_ms) {
                (Some(tokens), Some(ms)) if ms > 0 => Some(1000.0 * tokens as f64 / ms as f64),
                _ => None,
            };
            Ok(NodeRecent {
                window_ms,
                attempts: r.get::<i64>(0)?.max(0) as u64,
                succeeded: r.get::<i64>(1)?.max(0) as u64,
                failed: r.get::<i64>(2)?.max(0) as u64,
                mean_response_ms: r.get(3)?,
                tokens_per_s: per_s(r.get(4)?, r.get(5)?),
                gateway_requests: r.get::<i64>(6)?.max(0) as u64,
                gateway_tokens_per_s: per_s(r.get(7)?, r.get(8)?),
            })
        },
    )
}

/// Jobs counted by kind and state.
pub type JobCounts = Vec<(String, JobState, u64)>;

/// Every job counted by kind and state, and the newest event id, read in
/// one snapshot (one statement): where tailing `job_events` starts.
pub fn job_counts(db: &dyn Db) -> Result<(JobCounts, i64), StoreError> {
    let mut counts = Vec::new();
    let mut last = 0;
    db.for_each(SELECT_JOB_COUNTS_AND_LAST_EVENT, args![], &mut |r| {
        let n: i64 = r.get(2)?;
        match r.get::<Option<String>>(0)? {
            Some(kind) => counts.push((kind, parse_state(&r.get::<String>(1)?)?, n.max(0) as u64)),
            None => last = n,
        }
        Ok(true)
    })?;
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
    /// The node the event names (the lease holder, for leases and reports).
    pub node_id: Option<String>,
    /// Into `succeeded`: the completion tokens of the successful attempt.
    pub tokens: Option<u64>,
}

/// Up to `limit` events after `after_id`, oldest first.
pub fn events_after(db: &dyn Db, after_id: i64, limit: u32) -> Result<Vec<TailEvent>, StoreError> {
    db.many(SELECT_EVENTS_AFTER, args![after_id, limit], |r| {
        Ok(TailEvent {
            id: r.get(0)?,
            at: r.get(1)?,
            from: r
                .get::<Option<String>>(2)?
                .map(|s| parse_state(&s))
                .transpose()?,
            to: parse_state(&r.get::<String>(3)?)?,
            kind: r.get(4)?,
            since: r.get(5)?,
            node_id: r.get(6)?,
            tokens: r.get::<Option<i64>>(7)?.map(|t| t.max(0) as u64),
        })
    })
}

/// The first event at or after `since` (its id; past the newest event when
/// none is). `job_events` has no index on `at`, and needs none: the one
/// writer appends events with its clock, so `at` grows with `id`, and a
/// binary search over ids takes a few dozen primary-key lookups.
pub fn first_event_since(db: &dyn Db, since: i64) -> Result<i64, StoreError> {
    let (min, max): (i64, i64) = db.one(SELECT_EVENT_ID_RANGE, args![], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    let at_from = |id: i64| -> Result<Option<(i64, i64)>, StoreError> {
        db.optional(SELECT_EVENT_AT_FROM, args![id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
    };
    let (mut lo, mut hi) = (min, max + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match at_from(mid)? {
            // No event in [mid, found) exists: the answer is at most mid.
            Some((_, at)) if at >= since => hi = mid,
            Some((id, _)) => lo = id + 1,
            None => hi = mid,
        }
    }
    // `lo` bounds it from below; the event itself is the next one there.
    Ok(at_from(lo)?.map_or(max + 1, |(id, _)| id))
}

/// CPU and memory use of a node over a bucket of time.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageBucket {
    pub node_id: String,
    /// The bucket's index from the window's start.
    pub bucket: usize,
    pub cpu_percent_sum: f64,
    pub mem_percent_sum: f64,
    pub samples: u64,
}

fn usage_bucket(r: &Row<'_>) -> Result<UsageBucket, StoreError> {
    Ok(UsageBucket {
        node_id: r.get(0)?,
        bucket: r.get::<i64>(1)?.max(0) as usize,
        cpu_percent_sum: r.get::<Option<f64>>(2)?.unwrap_or(0.0),
        mem_percent_sum: r.get::<Option<f64>>(3)?.unwrap_or(0.0),
        samples: r.get::<i64>(4)?.max(0) as u64,
    })
}

/// Node CPU and memory from `start` on, in buckets of `step_ms`: the
/// per-minute rows where minutes are folded, the raw heartbeats after the
/// last folded minute (so the current minute counts too). Index ranges on
/// `node_metrics_minute (minute)` and `node_metrics (at)`.
pub fn node_usage(db: &dyn Db, start: i64, step_ms: u64) -> Result<Vec<UsageBucket>, StoreError> {
    let step = step_ms.max(1) as i64;
    let folded_until = db
        .one(SELECT_LAST_ROLLUP, args![], |r| r.get::<Option<i64>>(0))?
        .map_or(start, |last| (last + MINUTE_MS).max(start));
    // Folded minutes before `folded_until` only: the raw rows after it.
    let mut out = db.many(
        db.pick(SELECT_USAGE_MINUTES, SELECT_USAGE_MINUTES_PG),
        args![start, step, folded_until],
        usage_bucket,
    )?;
    out.extend(db.many(
        db.pick(SELECT_USAGE_RAW, SELECT_USAGE_RAW_PG),
        args![start, step, folded_until],
        usage_bucket,
    )?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{migrate, open_connection};
    use rusqlite::{Connection, params};

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

    #[test]
    fn the_first_event_of_a_window_is_found_by_its_time() {
        let (_dir, conn) = db();
        assert_eq!(
            first_event_since(&conn, 0).expect("empty"),
            1,
            "past the newest: none"
        );
        conn.execute_batch("INSERT INTO jobs (id, state, kind, request, max_attempts, run_at, created_at, updated_at) VALUES (1, 'queued', 'k', '{}', 3, 0, 0, 0)")
            .expect("job");
        // Ids with gaps, times growing with them.
        for (id, at) in [(3, 100), (4, 200), (9, 200), (10, 350), (17, 900)] {
            conn.execute(
                "INSERT INTO job_events (id, job_id, at, to_state, attempt) VALUES (?1, 1, ?2, 'queued', 0)",
                params![id, at],
            )
            .expect("event");
        }
        for (since, first) in [
            (0, 3),
            (100, 3),
            (101, 4),
            (200, 4),
            (201, 10),
            (900, 17),
            (901, 18),
        ] {
            assert_eq!(
                first_event_since(&conn, since).expect("search"),
                first,
                "since {since}"
            );
        }
    }

    #[test]
    fn node_usage_reads_folded_minutes_then_raw_heartbeats() {
        let (_dir, mut conn) = db();
        let retention = MetricsRetention {
            raw: Duration::from_secs(24 * 3600),
            minute: Duration::from_secs(30 * 24 * 3600),
        };
        let base = 100 * HOUR_MS;
        raw(&conn, base, 10.0, 0);
        raw(&conn, base + 30_000, 30.0, 0);
        maintain(&mut conn, base + 61_000, &retention);
        // This minute's heartbeat is not folded yet: read raw.
        raw(&conn, base + 62_000, 80.0, 0);
        let usage = node_usage(&conn, base, 60_000).expect("usage");
        let mean = |bucket: usize| {
            let rows: Vec<_> = usage.iter().filter(|u| u.bucket == bucket).collect();
            let n: u64 = rows.iter().map(|u| u.samples).sum();
            rows.iter().map(|u| u.cpu_percent_sum).sum::<f64>() / n as f64
        };
        assert_eq!(mean(0), 20.0, "the folded minute, weighted by its samples");
        assert_eq!(mean(1), 80.0, "the current minute, from raw rows");
        assert_eq!(
            usage.iter().map(|u| u.samples).sum::<u64>(),
            3,
            "nothing twice"
        );
        assert!(
            usage
                .iter()
                .all(|u| (u.mem_percent_sum / u.samples as f64 - 10.0).abs() < 1e-9)
        );
    }
}
