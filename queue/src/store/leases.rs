//! Lease writes: grant (by hand-off or pull, with its `route_reason`),
//! renew on heartbeat, release (expired, lost, undelivered, revoked), and the
//! delay-scheduling mark. Every function takes the transaction and the time.

use super::StoreError;
use super::jobs::*;
use super::sql::{Db, args};
use crate::routing::{self, JobNeeds, NodeProfile};
use crate::scoring::JobRoute;
use crate::security::Sealer;
use crate::tenancy::Tenants;
use kobo_protocol::{HeldLease, JobId, JobState, Lease, LlmRequest, PriorityClass};

/// The distinct submitters with jobs queued of one kind and class: a loose
/// index scan over `jobs_queued`, one seek per submitter.
pub const SELECT_QUEUED_KEYS: &str = "WITH RECURSIVE k(key) AS (SELECT (SELECT min(submitted_by) FROM jobs WHERE state = 'queued' AND kind = ?1 AND class = ?2) UNION ALL SELECT (SELECT min(submitted_by) FROM jobs WHERE state = 'queued' AND kind = ?1 AND class = ?2 AND submitted_by > k.key) FROM k WHERE k.key IS NOT NULL) SELECT key FROM k WHERE key IS NOT NULL";
/// One submitter's queued jobs of one kind and class, in the order it leases them.
macro_rules! select_queued_of_key {
    () => {
        "SELECT id, priority, ready_at, req_capabilities, req_gpu, confidential, data_location, model, prefer_region, prefer_node, locality_until, session IS NOT NULL AND prefer_node IS NOT NULL FROM jobs WHERE state = 'queued' AND kind = ?1 AND class = ?2 AND submitted_by = ?3 ORDER BY priority DESC, ready_at, id"
    };
}
pub const SELECT_QUEUED_OF_KEY: &str = select_queued_of_key!();
/// PostgreSQL sends every row of a query before the first is read: the scan
/// bound ([`MAX_SCAN_PER_KEY`]) goes into the query.
pub const SELECT_QUEUED_OF_KEY_PG: &str = concat!(select_queued_of_key!(), " LIMIT 1000");
/// Jobs a submitter has leased now (its concurrency limit).
pub const COUNT_LEASED_BY: &str =
    "SELECT count(*) FROM jobs WHERE state = 'leased' AND submitted_by = ?1";
/// A submitter's next queued jobs, over all kinds (offered again to parked
/// agents when one of its running jobs ends under a concurrency limit).
pub const SELECT_NEXT_QUEUED_OF_KEY: &str = "SELECT id FROM jobs WHERE state = 'queued' AND submitted_by = ?1 ORDER BY class DESC, priority DESC, ready_at, id LIMIT ?2";
/// The columns a lease grant needs, read before [`GRANT_LEASE`]. (A plain
/// read and update: `UPDATE … RETURNING` builds a temporary table on every
/// run, which cost more than the update itself.)
macro_rules! select_for_grant {
    () => {
        "SELECT lease_token + 1, attempts + 1, kind, timeout_ms, request FROM jobs WHERE id = ?1 AND state = 'queued'"
    };
}
pub const SELECT_FOR_GRANT: &str = select_for_grant!();
/// On PostgreSQL several leasers may run at once: a job another transaction
/// is granting is passed over (as River, Oban and Solid Queue do), and a job
/// it granted meanwhile is no longer `queued` when the lock is had.
pub const SELECT_FOR_GRANT_PG: &str = concat!(select_for_grant!(), " FOR UPDATE SKIP LOCKED");
pub const GRANT_LEASE: &str = "UPDATE jobs SET state = 'leased', node_id = ?2, lease_token = lease_token + 1, attempts = attempts + 1, lease_expires_at = ?3, updated_at = ?4, queue_reason = NULL, route_reason = ?5 WHERE id = ?1 AND state = 'queued'";

pub const RENEW_LEASE: &str = "UPDATE jobs SET lease_expires_at = ?4 WHERE id = ?1 AND state = 'leased' AND node_id = ?2 AND lease_token = ?3";
pub const SELECT_LEASED_BY_NODE: &str =
    "SELECT id, lease_token FROM jobs WHERE state = 'leased' AND node_id = ?1";

/// How far a single lease request looks past jobs it may not run, per kind
/// and submitter: bounds the cost when many queued jobs need another node.
const MAX_SCAN_PER_KEY: usize = 1000;

/// What fair share needs in the lease path: the submitters' policies and
/// virtual times, and the slot time a job is expected to take.
pub struct Share<'a> {
    /// The keys' policies: `None`, no concurrency limits either (leases go
    /// by class, priority and age alone).
    pub tenants: Option<&'a Tenants>,
    /// Whether the next job comes from the key furthest below its share
    /// (else from the best head job of any key; limits still hold).
    pub fair_share: bool,
    pub expected_ms: &'a dyn Fn(&JobRoute) -> f64,
}

fn one_second(_: &JobRoute) -> f64 {
    1000.0
}

impl Share<'static> {
    /// Leases by class, priority and age alone.
    pub const OFF: Share<'static> = Share {
        tenants: None,
        fair_share: false,
        expected_ms: &one_second,
    };
}

/// Grants a lease on a queued job to `node_id`; `None` if the job is no longer
/// queued.
pub fn grant_lease(
    db: &dyn Db,
    now: i64,
    sealer: &Sealer,
    lease_ttl_ms: u64,
    job_id: JobId,
    node_id: &str,
    route_reason: &str,
) -> Result<Option<Lease>, StoreError> {
    let expires_at = now + lease_ttl_ms as i64;
    let granted = db.optional(
        db.pick(SELECT_FOR_GRANT, SELECT_FOR_GRANT_PG),
        args![job_id],
        |r| {
            Ok((
                r.get::<i64>(0)?,
                r.get::<u32>(1)?,
                r.get::<String>(2)?,
                r.get::<Option<i64>>(3)?,
                r.get::<String>(4)?,
            ))
        },
    )?;
    let Some((lease_token, attempt, kind, timeout_ms, request)) = granted else {
        return Ok(None);
    };
    db.execute(
        GRANT_LEASE,
        args![job_id, node_id, expires_at, now, route_reason],
    )?;
    let request = sealer
        .open("request", &request)
        .map_err(|e| StoreError::Corrupt(format!("job {job_id}: {e}")))?;
    let request: LlmRequest = serde_json::from_str(&request)
        .map_err(|e| StoreError::Corrupt(format!("request of job {job_id}: {e}")))?;
    db.execute(
        INSERT_ATTEMPT,
        args![job_id, attempt, lease_token, node_id, now],
    )?;
    insert_event(
        db,
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

/// A queued job a node may run.
struct Candidate {
    priority: i64,
    ready_at: i64,
    id: JobId,
    route: JobRoute,
}

impl Candidate {
    /// The order within one submitter: priority, then age, then id.
    fn order(&self) -> (std::cmp::Reverse<i64>, i64, JobId) {
        (std::cmp::Reverse(self.priority), self.ready_at, self.id)
    }
}

/// One submitter's candidates in one class, best last (popped first).
struct KeyQueue {
    key: String,
    weight: u32,
    /// Leases it may still take (concurrency limit), `u32::MAX` when none.
    room: u32,
    jobs: Vec<Candidate>,
}

/// Leases up to `max_jobs` of the queued jobs `node` may run: interactive
/// before batch; within a class, the next job comes from the submitter with
/// the smallest fair-share start tag (see [`crate::tenancy::fair`]) that is
/// under its concurrency limit; within a submitter, highest priority, then
/// longest ready. Jobs still waiting for another preferred node or region
/// (delay scheduling) and jobs failing a hard constraint are passed over.
/// Cost: per kind and class, one seek per submitter, then one index walk
/// per submitter. `explain` gives each grant its `route_reason`.
#[allow(clippy::too_many_arguments)]
pub fn lease_for_node(
    db: &dyn Db,
    now: i64,
    sealer: &Sealer,
    lease_ttl_ms: u64,
    node: &NodeProfile,
    max_jobs: u32,
    explain: &dyn Fn(&JobRoute) -> String,
    share: &Share<'_>,
) -> Result<Vec<Lease>, StoreError> {
    let mut leases = Vec::new();
    for class in [PriorityClass::Interactive, PriorityClass::Batch] {
        let room = max_jobs.saturating_sub(leases.len() as u32);
        if room == 0 {
            break;
        }
        let mut queues = queued_by_key(db, now, node, class, room, share)?;
        while (leases.len() as u32) < max_jobs {
            let Some(at) = next_key(&queues, share) else {
                break;
            };
            let queue = &mut queues[at];
            let Some(job) = queue.jobs.pop() else {
                break;
            };
            let reason = explain(&job.route);
            if let Some(lease) = grant_lease(
                db,
                now,
                sealer,
                lease_ttl_ms,
                job.id,
                &node.node_id,
                &reason,
            )? {
                if let Some(tenants) = share.tenants.filter(|_| share.fair_share) {
                    let expected = (share.expected_ms)(&job.route);
                    tenants
                        .fair()
                        .charge(&queue.key, queue.weight, job.id, expected);
                }
                queue.room = queue.room.saturating_sub(1);
                leases.push(lease);
            }
        }
    }
    Ok(leases)
}

/// The submitter whose next job leases first: fair share's smallest start
/// tag (or, with fair share off, the best head job), among those with a job
/// left and room under their concurrency limit.
fn next_key(queues: &[KeyQueue], share: &Share<'_>) -> Option<usize> {
    let fair = share.tenants.filter(|_| share.fair_share).map(|t| t.fair());
    let tag = |q: &KeyQueue| fair.as_ref().map_or(0.0, |f| f.start_tag(&q.key));
    queues
        .iter()
        .enumerate()
        .filter(|(_, q)| q.room > 0 && !q.jobs.is_empty())
        .min_by(|(_, a), (_, b)| {
            tag(a).total_cmp(&tag(b)).then_with(|| {
                let head = |q: &KeyQueue| q.jobs.last().map(Candidate::order);
                head(a).cmp(&head(b))
            })
        })
        .map(|(at, _)| at)
}

/// Per submitter, up to `room` of its queued jobs of `class` that `node`
/// may run now, over the node's kinds.
fn queued_by_key(
    db: &dyn Db,
    now: i64,
    node: &NodeProfile,
    class: PriorityClass,
    room: u32,
    share: &Share<'_>,
) -> Result<Vec<KeyQueue>, StoreError> {
    let mut queues: Vec<KeyQueue> = Vec::new();
    for kind in &node.capabilities {
        let keys: Vec<String> =
            db.many(SELECT_QUEUED_KEYS, args![kind, class.rank()], |r| r.get(0))?;
        for key in keys {
            let at = match queues.iter().position(|q| q.key == key) {
                Some(at) => at,
                None => {
                    let (weight, limit) = share.tenants.map_or((1, None), |t| t.share_of(&key));
                    let room = match limit {
                        Some(limit) => limit.saturating_sub(count_leased_by(db, &key)?),
                        None => u32::MAX,
                    };
                    queues.push(KeyQueue {
                        key: key.clone(),
                        weight,
                        room,
                        jobs: Vec::new(),
                    });
                    queues.len() - 1
                }
            };
            let wanted = room.min(queues[at].room) as usize;
            if wanted == 0 {
                continue;
            }
            let queue = &mut queues[at];
            let mut found = 0usize;
            let mut scanned = 0usize;
            db.for_each(
                db.pick(SELECT_QUEUED_OF_KEY, SELECT_QUEUED_OF_KEY_PG),
                args![kind, class.rank(), key],
                &mut |row| {
                    scanned += 1;
                    let route = JobRoute {
                        needs: JobNeeds {
                            kind: kind.clone(),
                            capabilities: parse_list(&row.get::<String>(3)?)?,
                            gpu: row.get(4)?,
                            confidential: row.get(5)?,
                            data_location: row.get(6)?,
                            model: row.get(7)?,
                        },
                        prefer_region: row.get(8)?,
                        prefer_node: row.get(9)?,
                        session: row.get(11)?,
                    };
                    let waiting_elsewhere =
                        row.get::<Option<i64>>(10)?.is_some_and(|until| until > now)
                            && route.prefer_node.as_deref() != Some(node.node_id.as_str())
                            && route.prefer_region.as_deref() != Some(node.region.as_str());
                    if !waiting_elsewhere && routing::check(&route.needs, node).is_ok() {
                        queue.jobs.push(Candidate {
                            priority: row.get(1)?,
                            ready_at: row.get::<Option<i64>>(2)?.unwrap_or(0),
                            id: row.get(0)?,
                            route,
                        });
                        found += 1;
                    }
                    Ok(found < wanted && scanned < MAX_SCAN_PER_KEY)
                },
            )?;
        }
    }
    for queue in &mut queues {
        // Best last, so `pop` takes it; kinds merged.
        queue.jobs.sort_by_key(|c| std::cmp::Reverse(c.order()));
    }
    Ok(queues)
}

/// A submitter's next queued jobs, up to `n`, as jobs ready to hand off
/// (its concurrency limit freed a slot).
pub fn next_queued_of_key(db: &dyn Db, key: &str, n: u32) -> Result<Vec<ReadyJob>, StoreError> {
    let ids: Vec<JobId> = db.many(SELECT_NEXT_QUEUED_OF_KEY, args![key, n], |r| r.get(0))?;
    ids.into_iter()
        .map(|id| {
            let row = job_row(db, id)?;
            Ok(ReadyJob {
                id,
                route: row.route,
                locality_until: row.locality_until,
                submitted_by: row.submitted_by,
            })
        })
        .collect()
}

/// Jobs `key` has leased now.
pub fn count_leased_by(db: &dyn Db, key: &str) -> Result<u32, StoreError> {
    db.one(COUNT_LEASED_BY, args![key], |r| r.get(0))
}

/// Adds `note` to the event of `job_id`'s lease `lease_token` (what the
/// lease was told beyond the job, such as where a broken stream resumes).
pub fn note_lease(
    db: &dyn Db,
    job_id: JobId,
    lease_token: i64,
    note: &str,
) -> Result<(), StoreError> {
    db.execute(
        "UPDATE job_events SET detail = detail || '; ' || ?3 WHERE job_id = ?1 AND to_state = 'leased' AND detail = 'lease ' || ?2",
        args![job_id, lease_token, note],
    )?;
    Ok(())
}

/// Starts, or ends, a job's wait for its preferred node or region.
pub fn set_locality(db: &dyn Db, job_id: JobId, until: i64) -> Result<(), StoreError> {
    db.execute(
        "UPDATE jobs SET locality_until = ?2 WHERE id = ?1",
        args![job_id, until],
    )?;
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
    db: &dyn Db,
    now: i64,
    leases: &[(JobId, i64)],
    outcome: &str,
    error: &str,
    retry: Option<Retry>,
    changes: &mut Changes,
) -> Result<(), StoreError> {
    for &(job_id, lease_token) in leases {
        let mut row = job_row(db, job_id)?;
        if row.state != JobState::Leased || row.lease_token != lease_token {
            continue;
        }
        if outcome == "undelivered" {
            db.execute(
                "UPDATE jobs SET attempts = attempts - 1 WHERE id = ?1",
                args![job_id],
            )?;
            row.attempts -= 1;
        }
        let retry_at =
            retry.map(|r| now + r.backoff.delay_ms(row.attempts.max(1), r.unit_random) as i64);
        end_attempt(db, now, job_id, &row, outcome, error, retry_at, changes)?;
    }
    Ok(())
}

/// Releases every lease `node_id` holds.
pub fn release_node_leases(
    db: &dyn Db,
    now: i64,
    node_id: &str,
    outcome: &str,
    error: &str,
    retry: Option<Retry>,
    changes: &mut Changes,
) -> Result<usize, StoreError> {
    let held: Vec<(JobId, i64)> = db.many(SELECT_LEASED_BY_NODE, args![node_id], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    release_leases(db, now, &held, outcome, error, retry, changes)?;
    Ok(held.len())
}

/// Renews the leases an agent says it holds. Returns the held jobs that were
/// cancelled and those no longer the agent's.
pub fn renew_leases(
    db: &dyn Db,
    now: i64,
    lease_ttl_ms: u64,
    node_id: &str,
    held: &[HeldLease],
) -> Result<(Vec<JobId>, Vec<JobId>), StoreError> {
    let expires_at = now + lease_ttl_ms as i64;
    let mut cancelled = Vec::new();
    let mut revoked = Vec::new();
    for lease in held {
        let renewed = db.execute(
            RENEW_LEASE,
            args![lease.job_id, node_id, lease.lease_token, expires_at],
        )?;
        if renewed == 1 {
            continue;
        }
        let row = match job_row(db, lease.job_id) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_scan_bound_is_the_scan_bound() {
        assert!(SELECT_QUEUED_OF_KEY_PG.ends_with(&format!(" LIMIT {MAX_SCAN_PER_KEY}")));
    }
}
