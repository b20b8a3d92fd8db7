//! Transitions driven by the clock: scheduled jobs coming due, expired leases,
//! lost nodes, and when the next of these is due.

use kobo_protocol::{JobId, JobState};

use super::jobs::{Changes, Event, ReadyJob, Retry, insert_event};
use super::leases::{release_leases, release_node_leases};
use super::sql::{Db, args};
use super::{StoreError, parse_list};
use crate::routing::JobNeeds;
use crate::scoring::JobRoute;

pub const SELECT_DUE_SCHEDULED: &str = "SELECT id, kind, req_capabilities, req_gpu, confidential, data_location, model, attempts, prefer_region, prefer_node, locality_until, submitted_by, session IS NOT NULL AND prefer_node IS NOT NULL FROM jobs WHERE state = 'scheduled' AND run_at <= ?1 ORDER BY run_at LIMIT ?2";
pub const SELECT_EXPIRED_LEASES: &str = "SELECT id, lease_token FROM jobs WHERE state = 'leased' AND lease_expires_at <= ?1 ORDER BY lease_expires_at LIMIT ?2";
pub const SELECT_LOST_NODES: &str = "SELECT node_id FROM nodes WHERE status IN ('active', 'draining', 'drained') AND last_heartbeat_at < ?1";
pub const SELECT_NEXT_WAKEUP: &str = "SELECT min(t) FROM (SELECT min(run_at) AS t FROM jobs WHERE state = 'scheduled' UNION ALL SELECT min(lease_expires_at) FROM jobs WHERE state = 'leased' UNION ALL SELECT min(last_heartbeat_at) + ?1 FROM nodes WHERE status IN ('active', 'draining', 'drained') UNION ALL SELECT min(locality_until) FROM jobs WHERE state = 'queued' AND locality_until > 0 UNION ALL SELECT min(next_fire_at) FROM schedules WHERE paused = 0)";
/// PostgreSQL names every subquery in `FROM`.
pub const SELECT_NEXT_WAKEUP_PG: &str = "SELECT min(t) FROM (SELECT min(run_at) AS t FROM jobs WHERE state = 'scheduled' UNION ALL SELECT min(lease_expires_at) FROM jobs WHERE state = 'leased' UNION ALL SELECT min(last_heartbeat_at) + ?1 FROM nodes WHERE status IN ('active', 'draining', 'drained') UNION ALL SELECT min(locality_until) FROM jobs WHERE state = 'queued' AND locality_until > 0 UNION ALL SELECT min(next_fire_at) FROM schedules WHERE paused = 0) AS due";

/// Rows handled per timed transition per transaction, so one tick never holds
/// the writer for long; the timer comes straight back for the rest.
pub const TIMED_BATCH: i64 = 2000;
pub const REFRESH_NODES_AFTER_RESTART: &str =
    "UPDATE nodes SET last_heartbeat_at = ?1 WHERE status IN ('active', 'draining', 'drained')";
pub const REFRESH_LEASES_AFTER_RESTART: &str =
    "UPDATE jobs SET lease_expires_at = max(lease_expires_at, ?1) WHERE state = 'leased'";
/// PostgreSQL's scalar maximum is `greatest`.
pub const REFRESH_LEASES_AFTER_RESTART_PG: &str =
    "UPDATE jobs SET lease_expires_at = greatest(lease_expires_at, ?1) WHERE state = 'leased'";

/// After a restart: nodes get a fresh heartbeat deadline and leases a fresh
/// expiry (at least `now + ttl_ms`), instead of being declared lost for the
/// coordinator's own absence.
pub fn refresh_after_restart(db: &dyn Db, now: i64, ttl_ms: i64) -> Result<(), StoreError> {
    db.execute(REFRESH_NODES_AFTER_RESTART, args![now])?;
    db.execute(
        db.pick(
            REFRESH_LEASES_AFTER_RESTART,
            REFRESH_LEASES_AFTER_RESTART_PG,
        ),
        args![now + ttl_ms],
    )?;
    Ok(())
}

/// Moves scheduled jobs whose time has come to `queued`.
pub fn promote_due(db: &dyn Db, now: i64, changes: &mut Changes) -> Result<usize, StoreError> {
    let due: Vec<(JobId, JobRoute, u32, Option<i64>, String)> =
        db.many(SELECT_DUE_SCHEDULED, args![now, TIMED_BATCH], |r| {
            Ok((
                r.get(0)?,
                JobRoute {
                    needs: JobNeeds {
                        kind: r.get(1)?,
                        capabilities: parse_list(&r.get::<String>(2)?)?,
                        gpu: r.get(3)?,
                        confidential: r.get(4)?,
                        data_location: r.get(5)?,
                        model: r.get(6)?,
                    },
                    prefer_region: r.get(8)?,
                    prefer_node: r.get(9)?,
                    session: r.get(12)?,
                },
                r.get(7)?,
                r.get(10)?,
                r.get(11)?,
            ))
        })?;
    for (id, route, attempts, locality_until, submitted_by) in &due {
        db.execute(
            "UPDATE jobs SET state = 'queued', ready_at = ?2, updated_at = ?2 WHERE id = ?1",
            args![id, now],
        )?;
        insert_event(
            db,
            now,
            Event {
                job_id: *id,
                from: Some(JobState::Scheduled),
                to: JobState::Queued,
                node_id: None,
                attempt: *attempts,
                detail: None,
            },
        )?;
        changes.ready.push(ReadyJob {
            id: *id,
            route: route.clone(),
            locality_until: *locality_until,
            submitted_by: submitted_by.clone(),
        });
    }
    Ok(due.len())
}

/// Gives back jobs whose lease ran out.
pub fn reap_expired(
    db: &dyn Db,
    now: i64,
    retry: Option<Retry>,
    changes: &mut Changes,
) -> Result<usize, StoreError> {
    let expired: Vec<(JobId, i64)> =
        db.many(SELECT_EXPIRED_LEASES, args![now, TIMED_BATCH], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    release_leases(
        db,
        now,
        &expired,
        "expired",
        "lease expired",
        retry,
        changes,
    )?;
    Ok(expired.len())
}

/// Marks nodes that missed too many heartbeats `lost` and releases their
/// leases at once. Returns the nodes marked.
pub fn mark_lost_nodes(
    db: &dyn Db,
    now: i64,
    lost_after_ms: u64,
    retry: Option<Retry>,
    changes: &mut Changes,
) -> Result<Vec<String>, StoreError> {
    let lost: Vec<String> = db.many(SELECT_LOST_NODES, args![now - lost_after_ms as i64], |r| {
        r.get(0)
    })?;
    for node_id in &lost {
        db.execute(
            "UPDATE nodes SET status = 'lost' WHERE node_id = ?1",
            args![node_id],
        )?;
        release_node_leases(
            db,
            now,
            node_id,
            "node_lost",
            &format!("node {node_id} lost: no heartbeat for {lost_after_ms} ms"),
            retry,
            changes,
        )?;
    }
    Ok(lost)
}

/// When the next timed transition is due (`None`: nothing pending).
pub fn next_wakeup(db: &dyn Db, lost_after_ms: u64) -> Result<Option<i64>, StoreError> {
    db.one(
        db.pick(SELECT_NEXT_WAKEUP, SELECT_NEXT_WAKEUP_PG),
        args![lost_after_ms as i64 + 1],
        |r| r.get(0),
    )
}

pub const SELECT_LOCALITY_EXPIRED: &str = "SELECT id, kind, req_capabilities, req_gpu, confidential, data_location, model, prefer_region, prefer_node, submitted_by, session IS NOT NULL AND prefer_node IS NOT NULL FROM jobs WHERE state = 'queued' AND locality_until > 0 AND locality_until <= ?1 ORDER BY locality_until LIMIT ?2";

/// Ends the wait of jobs whose preferred node stayed busy past the bound:
/// from now on any eligible node may take them.
pub fn expire_locality(db: &dyn Db, now: i64, changes: &mut Changes) -> Result<usize, StoreError> {
    let expired: Vec<ReadyJob> =
        db.many(SELECT_LOCALITY_EXPIRED, args![now, TIMED_BATCH], |r| {
            Ok(ReadyJob {
                id: r.get(0)?,
                route: JobRoute {
                    needs: JobNeeds {
                        kind: r.get(1)?,
                        capabilities: parse_list(&r.get::<String>(2)?)?,
                        gpu: r.get(3)?,
                        confidential: r.get(4)?,
                        data_location: r.get(5)?,
                        model: r.get(6)?,
                    },
                    prefer_region: r.get(7)?,
                    prefer_node: r.get(8)?,
                    session: r.get(10)?,
                },
                locality_until: Some(0),
                submitted_by: r.get(9)?,
            })
        })?;
    for job in &expired {
        super::leases::set_locality(db, job.id, 0)?;
    }
    let n = expired.len();
    changes.ready.extend(expired);
    Ok(n)
}
