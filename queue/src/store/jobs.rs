//! Job writes: submit, lease, complete, cancel, renew and release. Every
//! function takes the transaction and the time; none knows about HTTP.

use kobo_protocol::{
    CompleteRequest, CompleteResponse, HeldLease, JobId, JobState, Lease, LlmRequest, Outcome,
    SubmitJob, SubmitResponse,
};
use rusqlite::{OptionalExtension, Transaction, params};

use super::StoreError;
use crate::routing::{self, JobNeeds, NodeProfile};
use crate::scoring::JobRoute;
use crate::security::Sealer;

pub const INSERT_JOB: &str = "INSERT INTO jobs (state, kind, model, priority, request, req_capabilities, req_gpu, data_location, confidential, prefer_region, prefer_node, max_attempts, timeout_ms, idempotency_key, run_at, ready_at, created_at, updated_at, submitted_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?17, ?18)";
pub const FIND_BY_IDEMPOTENCY_KEY: &str = "SELECT id, state FROM jobs WHERE idempotency_key = ?1";
pub const SELECT_QUEUED_OF_KIND: &str = "SELECT id, priority, ready_at, req_capabilities, req_gpu, confidential, data_location, model, prefer_region, prefer_node, locality_until FROM jobs WHERE state = 'queued' AND kind = ?1 ORDER BY priority DESC, ready_at, id";
/// The columns a lease grant needs, read before [`GRANT_LEASE`]. (A plain
/// read and update: `UPDATE … RETURNING` builds a temporary table on every
/// run, which cost more than the update itself.)
pub const SELECT_FOR_GRANT: &str = "SELECT lease_token + 1, attempts + 1, kind, timeout_ms, request FROM jobs WHERE id = ?1 AND state = 'queued'";
pub const GRANT_LEASE: &str = "UPDATE jobs SET state = 'leased', node_id = ?2, lease_token = lease_token + 1, attempts = attempts + 1, lease_expires_at = ?3, updated_at = ?4, queue_reason = NULL, route_reason = ?5 WHERE id = ?1 AND state = 'queued'";
pub const INSERT_ATTEMPT: &str = "INSERT INTO job_attempts (job_id, attempt, lease_token, node_id, started_at, outcome) VALUES (?1, ?2, ?3, ?4, ?5, 'running')";
pub const FINISH_ATTEMPT: &str = "UPDATE job_attempts SET finished_at = ?3, outcome = ?4, error = ?5, prompt_tokens = ?6, completion_tokens = ?7, duration_ms = ?8 WHERE job_id = ?1 AND lease_token = ?2";
pub const INSERT_EVENT: &str = "INSERT INTO job_events (job_id, at, from_state, to_state, node_id, attempt, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
pub const SELECT_JOB_ROW: &str = "SELECT state, node_id, lease_token, attempts, max_attempts, kind, req_capabilities, req_gpu, confidential, data_location, model, prefer_region, prefer_node, locality_until FROM jobs WHERE id = ?1";
pub const SELECT_ATTEMPT_OUTCOME: &str =
    "SELECT node_id, outcome FROM job_attempts WHERE job_id = ?1 AND lease_token = ?2";
pub const RENEW_LEASE: &str = "UPDATE jobs SET lease_expires_at = ?4 WHERE id = ?1 AND state = 'leased' AND node_id = ?2 AND lease_token = ?3";
pub const SELECT_LEASED_BY_NODE: &str =
    "SELECT id, lease_token FROM jobs WHERE state = 'leased' AND node_id = ?1";

/// How far a single lease request looks past jobs it may not run, per kind:
/// bounds the cost when many queued jobs need another node.
const MAX_SCAN_PER_KIND: usize = 1000;

/// A job that just became `queued`, with what it needs of a node.
#[derive(Debug, Clone)]
pub struct ReadyJob {
    pub id: JobId,
    pub route: JobRoute,
    /// Delay scheduling: `None` not yet decided, `Some(0)` over, else until when
    /// the job waits for its preferred node or region.
    pub locality_until: Option<i64>,
}

/// A successful attempt, for the speed book.
#[derive(Debug, Clone)]
pub struct Completion {
    pub node_id: String,
    pub kind: String,
    pub model: Option<String>,
    pub duration_ms: u64,
    pub completion_tokens: u64,
}

/// What a write did besides its answer, for the caller to turn into
/// hand-offs and notifications.
#[derive(Debug, Default)]
pub struct Changes {
    pub ready: Vec<ReadyJob>,
    pub finished: Vec<JobId>,
    pub completed: Vec<Completion>,
    /// A job was scheduled for later: the timer may need to wake sooner.
    pub scheduled: bool,
}

/// The retry delay of a failed attempt: the policy and the random draw
/// (a parameter, so tests choose it).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub backoff: Backoff,
    /// Uniform in [0, 1]: where in the jitter range the delay falls.
    pub unit_random: f64,
}

/// Retry timing for failed attempts.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base_ms: u64,
    pub cap_ms: u64,
}

impl Backoff {
    /// Exponential in the attempt number, with "equal jitter": between half
    /// and all of `base · 2^(attempt-1)`, capped.
    pub fn delay_ms(&self, attempt: u32, unit_random: f64) -> u64 {
        let exp = self
            .base_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(32))
            .min(self.cap_ms);
        let half = exp / 2;
        half + (half as f64 * unit_random.clamp(0.0, 1.0)) as u64
    }
}

fn json_list(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn parse_list(text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("string list {text:?}: {e}")))
}

pub(crate) fn parse_state(text: &str) -> Result<JobState, StoreError> {
    JobState::parse(text).ok_or_else(|| StoreError::Corrupt(format!("job state {text:?}")))
}

/// One state change of a job, for `job_events`.
pub struct Event<'a> {
    pub job_id: JobId,
    pub from: Option<JobState>,
    pub to: JobState,
    pub node_id: Option<&'a str>,
    pub attempt: u32,
    pub detail: Option<&'a str>,
}

pub fn insert_event(tx: &Transaction<'_>, now: i64, event: Event<'_>) -> Result<(), StoreError> {
    tx.prepare_cached(INSERT_EVENT)?.execute(params![
        event.job_id,
        now,
        event.from.map(JobState::as_str),
        event.to.as_str(),
        event.node_id,
        event.attempt,
        event.detail
    ])?;
    Ok(())
}

/// Inserts a validated job; with an idempotency key already used, returns the
/// earlier job unchanged.
pub fn insert_job(
    tx: &Transaction<'_>,
    now: i64,
    sealer: &Sealer,
    default_max_attempts: u32,
    submitted_by: &str,
    job: &SubmitJob,
    changes: &mut Changes,
) -> Result<SubmitResponse, StoreError> {
    if let Some(key) = &job.idempotency_key {
        let found = tx
            .prepare_cached(FIND_BY_IDEMPOTENCY_KEY)?
            .query_row([key], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .optional()?;
        if let Some((id, state)) = found {
            return Ok(SubmitResponse {
                id,
                state: parse_state(&state)?,
                created: false,
            });
        }
    }
    let run_at = job.run_at.unwrap_or(now);
    let state = if run_at > now {
        JobState::Scheduled
    } else {
        JobState::Queued
    };
    let request = serde_json::to_string(&job.llm_request())
        .map_err(|e| StoreError::Corrupt(format!("request: {e}")))?;
    // A confidential prompt never reaches the database in the clear.
    let request = if job.requirements.confidential {
        sealer.seal("request", &request)
    } else {
        request
    };
    let req = &job.requirements;
    // A plain insert and the new row id: `INSERT … RETURNING` builds a
    // temporary table on every run, which cost more than the insert.
    tx.prepare_cached(INSERT_JOB)?.execute(params![
        state.as_str(),
        job.kind,
        job.model,
        job.priority,
        request,
        json_list(&req.capabilities),
        req.gpu,
        req.data_location,
        req.confidential,
        job.preferences.region,
        job.preferences.node,
        job.max_attempts.unwrap_or(default_max_attempts),
        job.timeout_ms.map(|t| t as i64),
        job.idempotency_key,
        run_at,
        (state == JobState::Queued).then_some(now),
        now,
        submitted_by,
    ])?;
    let id = tx.last_insert_rowid();
    insert_event(
        tx,
        now,
        Event {
            job_id: id,
            from: None,
            to: state,
            node_id: None,
            attempt: 0,
            detail: Some("submitted"),
        },
    )?;
    if state == JobState::Queued {
        changes.ready.push(ReadyJob {
            id,
            route: JobRoute {
                needs: JobNeeds {
                    kind: job.kind.clone(),
                    capabilities: req.capabilities.clone(),
                    gpu: req.gpu,
                    confidential: req.confidential,
                    data_location: req.data_location.clone(),
                    model: job.model.clone(),
                },
                prefer_region: job.preferences.region.clone(),
                prefer_node: job.preferences.node.clone(),
            },
            locality_until: None,
        });
    } else {
        changes.scheduled = true;
    }
    Ok(SubmitResponse {
        id,
        state,
        created: true,
    })
}

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

/// Starts, or ends, a job's wait for its preferred node or region.
pub fn set_locality(tx: &Transaction<'_>, job_id: JobId, until: i64) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE jobs SET locality_until = ?2 WHERE id = ?1")?
        .execute(params![job_id, until])?;
    Ok(())
}

/// The columns of a job that writes decide on.
struct JobRow {
    state: JobState,
    node_id: Option<String>,
    lease_token: i64,
    attempts: u32,
    max_attempts: u32,
    route: JobRoute,
    locality_until: Option<i64>,
}

fn job_row(tx: &Transaction<'_>, job_id: JobId) -> Result<JobRow, StoreError> {
    tx.prepare_cached(SELECT_JOB_ROW)?
        .query_row([job_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, bool>(7)?,
                r.get::<_, bool>(8)?,
                r.get::<_, Option<String>>(9)?,
                r.get::<_, Option<String>>(10)?,
                (
                    r.get::<_, Option<String>>(11)?,
                    r.get::<_, Option<String>>(12)?,
                    r.get::<_, Option<i64>>(13)?,
                ),
            ))
        })
        .optional()?
        .ok_or(StoreError::JobNotFound(job_id))
        .and_then(
            |(
                state,
                node_id,
                lease_token,
                attempts,
                max_attempts,
                kind,
                caps,
                gpu,
                confidential,
                data_location,
                model,
                (prefer_region, prefer_node, locality_until),
            )| {
                Ok(JobRow {
                    state: parse_state(&state)?,
                    node_id,
                    lease_token,
                    attempts,
                    max_attempts,
                    route: JobRoute {
                        needs: JobNeeds {
                            kind,
                            capabilities: parse_list(&caps)?,
                            gpu,
                            confidential,
                            data_location,
                            model,
                        },
                        prefer_region,
                        prefer_node,
                    },
                    locality_until,
                })
            },
        )
}

/// Applies an agent's report on an attempt. A report without the current
/// lease token changes nothing and is a [`StoreError::StaleLease`].
pub fn complete_job(
    tx: &Transaction<'_>,
    now: i64,
    sealer: &Sealer,
    retry: Retry,
    job_id: JobId,
    report: &CompleteRequest,
    changes: &mut Changes,
) -> Result<CompleteResponse, StoreError> {
    let row = job_row(tx, job_id)?;
    let holds = row.state == JobState::Leased
        && row.lease_token == report.lease_token
        && row.node_id.as_deref() == Some(report.node_id.as_str());
    if !holds {
        let earlier: Option<(String, String)> = tx
            .prepare_cached(SELECT_ATTEMPT_OUTCOME)?
            .query_row(params![job_id, report.lease_token], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let wanted = match report.outcome {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::Failed { .. } => "failed",
        };
        if let Some((node, outcome)) = earlier
            && node == report.node_id
            && outcome == wanted
        {
            return Ok(CompleteResponse {
                job_id,
                state: row.state,
                duplicate: true,
            });
        }
        return Err(StoreError::StaleLease(format!(
            "job {job_id}: lease {} of {} is not current (job is {}, lease {}{})",
            report.lease_token,
            report.node_id,
            row.state,
            row.lease_token,
            row.node_id
                .as_deref()
                .map(|n| format!(" on {n}"))
                .unwrap_or_default()
        )));
    }
    let node_id = report.node_id.as_str();
    let state = match &report.outcome {
        Outcome::Succeeded { output } => {
            changes.completed.push(Completion {
                node_id: report.node_id.clone(),
                kind: row.route.needs.kind.clone(),
                model: row.route.needs.model.clone(),
                duration_ms: output.usage.duration_ms,
                completion_tokens: output.usage.completion_tokens,
            });
            let result = serde_json::to_string(output)
                .map_err(|e| StoreError::Corrupt(format!("result: {e}")))?;
            let result = if row.route.needs.confidential {
                sealer.seal("result", &result)
            } else {
                result
            };
            tx.prepare_cached(
                "UPDATE jobs SET state = 'succeeded', result = ?2, finished_at = ?3, updated_at = ?3, lease_expires_at = NULL, last_error = NULL WHERE id = ?1",
            )?
            .execute(params![job_id, result, now])?;
            tx.prepare_cached(FINISH_ATTEMPT)?.execute(params![
                job_id,
                report.lease_token,
                now,
                "succeeded",
                None::<String>,
                output.usage.prompt_tokens as i64,
                output.usage.completion_tokens as i64,
                output.usage.duration_ms as i64
            ])?;
            tx.prepare_cached(
                "UPDATE nodes SET jobs_succeeded = jobs_succeeded + 1 WHERE node_id = ?1",
            )?
            .execute([node_id])?;
            insert_event(
                tx,
                now,
                Event {
                    job_id,
                    from: Some(JobState::Leased),
                    to: JobState::Succeeded,
                    node_id: Some(node_id),
                    attempt: row.attempts,
                    detail: None,
                },
            )?;
            changes.finished.push(job_id);
            JobState::Succeeded
        }
        Outcome::Failed { error, retryable } => {
            tx.prepare_cached("UPDATE nodes SET jobs_failed = jobs_failed + 1 WHERE node_id = ?1")?
                .execute([node_id])?;
            let retry_at = retryable
                .then(|| now + retry.backoff.delay_ms(row.attempts, retry.unit_random) as i64);
            end_attempt(tx, now, job_id, &row, "failed", error, retry_at, changes)?
        }
    };
    Ok(CompleteResponse {
        job_id,
        state,
        duplicate: false,
    })
}

/// Ends the current attempt of a leased job that did not succeed: the job is
/// retried (at `retry_at`, or at once when `None`) while attempts remain, and
/// is `dead` with `error` kept otherwise. A `failed` outcome without
/// `retry_at` is not retryable and goes to `dead` at once.
#[allow(clippy::too_many_arguments)]
fn end_attempt(
    tx: &Transaction<'_>,
    now: i64,
    job_id: JobId,
    row: &JobRow,
    outcome: &str,
    error: &str,
    retry_at: Option<i64>,
    changes: &mut Changes,
) -> Result<JobState, StoreError> {
    let node_id = row.node_id.as_deref();
    tx.prepare_cached(FINISH_ATTEMPT)?.execute(params![
        job_id,
        row.lease_token,
        now,
        outcome,
        error,
        None::<i64>,
        None::<i64>,
        None::<i64>
    ])?;
    let retryable = outcome != "failed" || retry_at.is_some();
    let state = if !retryable || row.attempts >= row.max_attempts {
        tx.prepare_cached(
            "UPDATE jobs SET state = 'dead', last_error = ?2, finished_at = ?3, updated_at = ?3, lease_expires_at = NULL WHERE id = ?1",
        )?
        .execute(params![job_id, error, now])?;
        changes.finished.push(job_id);
        JobState::Dead
    } else if let Some(at) = retry_at.filter(|at| *at > now) {
        tx.prepare_cached(
            "UPDATE jobs SET state = 'scheduled', last_error = ?2, run_at = ?3, updated_at = ?4, lease_expires_at = NULL WHERE id = ?1",
        )?
        .execute(params![job_id, error, at, now])?;
        changes.scheduled = true;
        JobState::Scheduled
    } else {
        tx.prepare_cached(
            "UPDATE jobs SET state = 'queued', last_error = ?2, ready_at = ?3, updated_at = ?3, lease_expires_at = NULL WHERE id = ?1",
        )?
        .execute(params![job_id, error, now])?;
        changes.ready.push(ReadyJob {
            id: job_id,
            route: row.route.clone(),
            locality_until: row.locality_until,
        });
        JobState::Queued
    };
    let detail = format!("{outcome}: {error}");
    insert_event(
        tx,
        now,
        Event {
            job_id,
            from: Some(JobState::Leased),
            to: state,
            node_id,
            attempt: row.attempts,
            detail: Some(&detail),
        },
    )?;
    Ok(state)
}

/// Takes leases away from their holder (expired, node lost or restarted, or an
/// answer that could not be delivered) and puts the jobs back at once, or to
/// `dead` when their attempts are used up. With outcome `undelivered` the
/// attempt is not counted: the agent never saw the job. Leases that are no
/// longer current are skipped.
pub fn release_leases(
    tx: &Transaction<'_>,
    now: i64,
    leases: &[(JobId, i64)],
    outcome: &str,
    error: &str,
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
        end_attempt(tx, now, job_id, &row, outcome, error, None, changes)?;
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
    changes: &mut Changes,
) -> Result<usize, StoreError> {
    let held: Vec<(JobId, i64)> = tx
        .prepare_cached(SELECT_LEASED_BY_NODE)?
        .query_map([node_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    release_leases(tx, now, &held, outcome, error, changes)?;
    Ok(held.len())
}

/// Cancels a job. Queued and scheduled jobs end at once; a leased job ends
/// too, and its agent learns it from its next heartbeat answer.
pub fn cancel_job(
    tx: &Transaction<'_>,
    now: i64,
    job_id: JobId,
    changes: &mut Changes,
) -> Result<JobState, StoreError> {
    let row = job_row(tx, job_id)?;
    if row.state.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "job {job_id} is already {}",
            row.state
        )));
    }
    tx.prepare_cached(
        "UPDATE jobs SET state = 'cancelled', finished_at = ?2, updated_at = ?2 WHERE id = ?1",
    )?
    .execute(params![job_id, now])?;
    if row.state == JobState::Leased {
        tx.prepare_cached(FINISH_ATTEMPT)?.execute(params![
            job_id,
            row.lease_token,
            now,
            "cancelled",
            None::<String>,
            None::<i64>,
            None::<i64>,
            None::<i64>
        ])?;
    }
    insert_event(
        tx,
        now,
        Event {
            job_id,
            from: Some(row.state),
            to: JobState::Cancelled,
            node_id: row.node_id.as_deref(),
            attempt: row.attempts,
            detail: Some("cancelled by request"),
        },
    )?;
    changes.finished.push(job_id);
    Ok(row.state)
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
