//! Lease writes: grant (by hand-off or pull, with its `route_reason`),
//! renew on heartbeat, release (expired, lost, undelivered, revoked), and the
//! delay-scheduling mark. Every function takes the transaction and the time.

use kobo_protocol::{HeldLease, JobId, JobState, Lease, LlmRequest};
use rusqlite::{OptionalExtension, Transaction, params};

use super::StoreError;
use super::jobs::*;
use crate::routing::{self, JobNeeds, NodeProfile};
use crate::scoring::JobRoute;
use crate::security::Sealer;

pub const SELECT_QUEUED_OF_KIND: &str = "SELECT id, priority, ready_at, req_capabilities, req_gpu, confidential, data_location, model, prefer_region, prefer_node, locality_until FROM jobs WHERE state = 'queued' AND kind = ?1 ORDER BY priority DESC, ready_at, id";
/// The columns a lease grant needs, read before [`GRANT_LEASE`]. (A plain
/// read and update: `UPDATE … RETURNING` builds a temporary table on every
/// run, which cost more than the update itself.)
pub const SELECT_FOR_GRANT: &str = "SELECT lease_token + 1, attempts + 1, kind, timeout_ms, request FROM jobs WHERE id = ?1 AND state = 'queued'";
pub const GRANT_LEASE: &str = "UPDATE jobs SET state = 'leased', node_id = ?2, lease_token = lease_token + 1, attempts = attempts + 1, lease_expires_at = ?3, updated_at = ?4, queue_reason = NULL, route_reason = ?5 WHERE id = ?1 AND state = 'queued'";

pub const RENEW_LEASE: &str = "UPDATE jobs SET lease_expires_at = ?4 WHERE id = ?1 AND state = 'leased' AND node_id = ?2 AND lease_token = ?3";
pub const SELECT_LEASED_BY_NODE: &str =
    "SELECT id, lease_token FROM jobs WHERE state = 'leased' AND node_id = ?1";

/// How far a single lease request looks past jobs it may not run, per kind:
/// bounds the cost when many queued jobs need another node.
const MAX_SCAN_PER_KIND: usize = 1000;

/// Grants a lease on a queued job to `node_id`; `None` if the job is no longer
/// queued.
pub fn grant_lease(
    tx: &Transaction<'_>,
    now: i64,
    sealer: &Sealer,
    lease_ttl_ms: u64,
    job_id: JobId,
    node_id: &str,
    route_reason: &str,
) -> Result<Option<Lease>, StoreError> {
    let expires_at = now + lease_ttl_ms as i64;
    let granted = tx
        .prepare_cached(SELECT_FOR_GRANT)?
        .query_row([job_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, String>(4)?,
            ))
        })
        .optional()?;
    let Some((lease_token, attempt, kind, timeout_ms, request)) = granted else {
        return Ok(None);
    };
    tx.prepare_cached(GRANT_LEASE)?.execute(params![
        job_id,
        node_id,
        expires_at,
        now,
        route_reason
    ])?;
    let request = sealer
        .open("request", &request)
        .map_err(|e| StoreError::Corrupt(format!("job {job_id}: {e}")))?;
    let request: LlmRequest = serde_json::from_str(&request)
        .map_err(|e| StoreError::Corrupt(format!("request of job {job_id}: {e}")))?;
    tx.prepare_cached(INSERT_ATTEMPT)?.execute(params![
        job_id,
        attempt,
        lease_token,
        node_id,
        now
    ])?;
    insert_event(
        tx,
        now,
        Event {
            job_id,
            from: Some(JobState::Queued),
            to: JobState::Leased,
            node_id: Some(node_id),
            attempt,
            detail: Some(&format!("lease {lease_token}")),
        },
    )?;
    Ok(Some(Lease {
        job_id,
        lease_token,
        attempt,
        kind,
        expires_at,
        timeout_ms: timeout_ms.map(|t| t as u64),
        request,
    }))
}

/// Leases up to `max_jobs` of the best queued jobs `node` may run: highest
/// priority first, then longest ready. One index walk per capability. Jobs
/// still waiting for another preferred node or region (delay scheduling) are
/// passed over. `explain` gives each grant its `route_reason`.
pub fn lease_for_node(
    tx: &Transaction<'_>,
    now: i64,
    sealer: &Sealer,
    lease_ttl_ms: u64,
    node: &NodeProfile,
    max_jobs: u32,
    explain: &dyn Fn(&JobRoute) -> String,
) -> Result<Vec<Lease>, StoreError> {
    // (priority, ready_at, id, route) of eligible candidates over all kinds.
    let mut candidates: Vec<(i64, i64, JobId, JobRoute)> = Vec::new();
    let mut stmt = tx.prepare_cached(SELECT_QUEUED_OF_KIND)?;
    for kind in &node.capabilities {
        let mut rows = stmt.query([kind])?;
        let mut found = 0u32;
        let mut scanned = 0usize;
        while let Some(row) = rows.next()? {
            scanned += 1;
            let route = JobRoute {
                needs: JobNeeds {
                    kind: kind.clone(),
                    capabilities: parse_list(&row.get::<_, String>(3)?)?,
                    gpu: row.get(4)?,
                    confidential: row.get(5)?,
                    data_location: row.get(6)?,
                    model: row.get(7)?,
                },
                prefer_region: row.get(8)?,
                prefer_node: row.get(9)?,
            };
            let waiting_elsewhere = row
                .get::<_, Option<i64>>(10)?
                .is_some_and(|until| until > now)
                && route.prefer_node.as_deref() != Some(node.node_id.as_str())
                && route.prefer_region.as_deref() != Some(node.region.as_str());
            if !waiting_elsewhere && routing::check(&route.needs, node).is_ok() {
                candidates.push((
                    row.get(1)?,
                    row.get::<_, Option<i64>>(2)?.unwrap_or(0),
                    row.get(0)?,
                    route,
                ));
                found += 1;
            }
            if found >= max_jobs || scanned >= MAX_SCAN_PER_KIND {
                break;
            }
        }
    }
    drop(stmt);
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut leases = Vec::new();
    for (_, _, job_id, route) in candidates.into_iter().take(max_jobs as usize) {
        let reason = explain(&route);
        if let Some(lease) = grant_lease(
            tx,
            now,
            sealer,
            lease_ttl_ms,
            job_id,
            &node.node_id,
            &reason,
        )? {
            leases.push(lease);
        }
    }
    Ok(leases)
}

/// Adds `note` to the event of `job_id`'s lease `lease_token` (what the
/// lease was told beyond the job, such as where a broken stream resumes).
pub fn note_lease(
    tx: &Transaction<'_>,
    job_id: JobId,
    lease_token: i64,
    note: &str,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE job_events SET detail = detail || '; ' || ?3 WHERE job_id = ?1 AND to_state = 'leased' AND detail = 'lease ' || ?2",
    )?
    .execute(params![job_id, lease_token, note])?;
    Ok(())
}

/// Starts, or ends, a job's wait for its preferred node or region.
pub fn set_locality(tx: &Transaction<'_>, job_id: JobId, until: i64) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE jobs SET locality_until = ?2 WHERE id = ?1")?
        .execute(params![job_id, until])?;
    Ok(())
}

/// Takes leases away from their holder (expired, node lost or restarted, or an
/// answer that could not be delivered) and puts the jobs back at once, or to
/// `dead` when their attempts are used up. With outcome `undelivered` the
/// attempt is not counted: the agent never saw the job. Leases that are no
/// longer current are skipped.
/// With `retry`, a released job waits out the retry backoff of its attempt
/// number (`scheduled`) before it is queued again: a job that takes its
/// node down every time (a poison job) does not take the fleet down at
/// once. Without, it is queued at once.
pub fn release_leases(
    tx: &Transaction<'_>,
    now: i64,
    leases: &[(JobId, i64)],
    outcome: &str,
    error: &str,
    retry: Option<Retry>,
    changes: &mut Changes,
) -> Result<(), StoreError> {
    for &(job_id, lease_token) in leases {
        let mut row = job_row(tx, job_id)?;
        if row.state != JobState::Leased || row.lease_token != lease_token {
            continue;
        }
        if outcome == "undelivered" {
            tx.prepare_cached("UPDATE jobs SET attempts = attempts - 1 WHERE id = ?1")?
                .execute([job_id])?;
            row.attempts -= 1;
        }
        let retry_at =
            retry.map(|r| now + r.backoff.delay_ms(row.attempts.max(1), r.unit_random) as i64);
        end_attempt(tx, now, job_id, &row, outcome, error, retry_at, changes)?;
    }
    Ok(())
}

/// Releases every lease `node_id` holds.
pub fn release_node_leases(
    tx: &Transaction<'_>,
    now: i64,
    node_id: &str,
    outcome: &str,
    error: &str,
    retry: Option<Retry>,
    changes: &mut Changes,
) -> Result<usize, StoreError> {
    let held: Vec<(JobId, i64)> = tx
        .prepare_cached(SELECT_LEASED_BY_NODE)?
        .query_map([node_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    release_leases(tx, now, &held, outcome, error, retry, changes)?;
    Ok(held.len())
}

/// Renews the leases an agent says it holds. Returns the held jobs that were
/// cancelled and those no longer the agent's.
pub fn renew_leases(
    tx: &Transaction<'_>,
    now: i64,
    lease_ttl_ms: u64,
    node_id: &str,
    held: &[HeldLease],
) -> Result<(Vec<JobId>, Vec<JobId>), StoreError> {
    let expires_at = now + lease_ttl_ms as i64;
    let mut cancelled = Vec::new();
    let mut revoked = Vec::new();
    for lease in held {
        let renewed = tx.prepare_cached(RENEW_LEASE)?.execute(params![
            lease.job_id,
            node_id,
            lease.lease_token,
            expires_at
        ])?;
        if renewed == 1 {
            continue;
        }
        let row = match job_row(tx, lease.job_id) {
            Ok(row) => row,
            Err(StoreError::JobNotFound(_)) => {
                revoked.push(lease.job_id);
                continue;
            }
            Err(err) => return Err(err),
        };
        let same_lease =
            row.lease_token == lease.lease_token && row.node_id.as_deref() == Some(node_id);
        if row.state == JobState::Cancelled && same_lease {
            cancelled.push(lease.job_id);
        } else {
            revoked.push(lease.job_id);
        }
    }
    Ok((cancelled, revoked))
}
