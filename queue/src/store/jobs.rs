//! Job writes: submit, complete and cancel, and the pieces leases share
//! (events, attempts, retries); the leases themselves are in `leases.rs`.
//! Every function takes the transaction and the time; none knows about HTTP.

use super::StoreError;
use super::sql::{Db, args};
use crate::routing::JobNeeds;
use crate::scoring::JobRoute;
use crate::security::Sealer;
use kobo_protocol::{
    CompleteRequest, CompleteResponse, JobId, JobState, LlmOutput, Outcome, PriorityClass,
    SubmitJob, SubmitResponse,
};

macro_rules! insert_job {
    () => {
        "INSERT INTO jobs (state, kind, model, priority, request, req_capabilities, req_gpu, data_location, confidential, prefer_region, prefer_node, max_attempts, timeout_ms, idempotency_key, run_at, ready_at, created_at, updated_at, submitted_by, gateway, class, session) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?17, ?18, ?19, ?20, ?21)"
    };
}
pub const INSERT_JOB: &str = insert_job!();
/// On PostgreSQL two writers may insert one idempotency key at once (SQLite
/// has one writer): the later insert waits for the earlier and inserts
/// nothing, and the submit answers with the earlier job.
pub const INSERT_JOB_PG: &str = concat!(insert_job!(), " ON CONFLICT (idempotency_key) DO NOTHING");
/// The node that served a session last.
/// The node that served a submitter's session last (sessions are the
/// submitter's own: two keys' `user` fields never share a node preference).
pub const SELECT_SESSION_NODE: &str = "SELECT node_id FROM jobs WHERE session = ?1 AND state = 'succeeded' AND submitted_by = ?2 ORDER BY finished_at DESC LIMIT 1";
pub const FIND_BY_IDEMPOTENCY_KEY: &str = "SELECT id, state FROM jobs WHERE idempotency_key = ?1";
pub const INSERT_ATTEMPT: &str = "INSERT INTO job_attempts (job_id, attempt, lease_token, node_id, started_at, outcome) VALUES (?1, ?2, ?3, ?4, ?5, 'running')";
pub const FINISH_ATTEMPT: &str = "UPDATE job_attempts SET finished_at = ?3, outcome = ?4, error = ?5, prompt_tokens = ?6, completion_tokens = ?7, duration_ms = ?8 WHERE job_id = ?1 AND lease_token = ?2";
pub const INSERT_EVENT: &str = "INSERT INTO job_events (job_id, at, from_state, to_state, node_id, attempt, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
macro_rules! select_job_row {
    () => {
        "SELECT state, node_id, lease_token, attempts, max_attempts, kind, req_capabilities, req_gpu, confidential, data_location, model, prefer_region, prefer_node, locality_until, submitted_by, session IS NOT NULL AND prefer_node IS NOT NULL FROM jobs WHERE id = ?1"
    };
}
pub const SELECT_JOB_ROW: &str = select_job_row!();
/// PostgreSQL locks the row a write decides on until it commits: two
/// completions of one lease (or a completion and an expiry) take turns, as
/// SQLite's single writer makes them.
pub const SELECT_JOB_ROW_PG: &str = concat!(select_job_row!(), " FOR UPDATE");
pub const SELECT_ATTEMPT_OUTCOME: &str =
    "SELECT node_id, outcome FROM job_attempts WHERE job_id = ?1 AND lease_token = ?2";

/// A job that just became `queued`, with what it needs of a node.
#[derive(Debug, Clone)]
pub struct ReadyJob {
    pub id: JobId,
    pub route: JobRoute,
    /// Delay scheduling: `None` not yet decided, `Some(0)` over, else until when
    /// the job waits for its preferred node or region.
    pub locality_until: Option<i64>,
    /// Who submitted it (`jobs.submitted_by`): whose share and limits it counts against.
    pub submitted_by: String,
}

/// A successful attempt, for the speed book.
#[derive(Debug, Clone)]
pub struct Completion {
    pub job_id: JobId,
    pub submitted_by: String,
    pub node_id: String,
    pub kind: String,
    pub model: Option<String>,
    pub duration_ms: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// What a write did besides its answer, for the caller to turn into
/// hand-offs and notifications.
#[derive(Debug, Default)]
pub struct Changes {
    pub ready: Vec<ReadyJob>,
    pub finished: Vec<JobId>,
    pub completed: Vec<Completion>,
    /// Submitters a leased job of which just ended (a slot under their
    /// concurrency limit came free), and the job.
    pub freed: Vec<(String, JobId)>,
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

pub(super) fn json_list(list: &[String]) -> String {
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

pub fn insert_event(db: &dyn Db, now: i64, event: Event<'_>) -> Result<(), StoreError> {
    db.execute(
        INSERT_EVENT,
        args![
            event.job_id,
            now,
            event.from.map(JobState::as_str),
            event.to.as_str(),
            event.node_id,
            event.attempt,
            event.detail
        ],
    )?;
    Ok(())
}

/// Inserts a validated job; with an idempotency key already used, returns the
/// earlier job unchanged.
pub fn insert_job(
    db: &dyn Db,
    now: i64,
    sealer: &Sealer,
    default_max_attempts: u32,
    submitted_by: &str,
    job: &SubmitJob,
    changes: &mut Changes,
) -> Result<SubmitResponse, StoreError> {
    let request = job.llm_request();
    insert_request(
        db,
        now,
        sealer,
        default_max_attempts,
        submitted_by,
        PriorityClass::Batch,
        job,
        &request,
        changes,
    )
}

/// Inserts a job whose call is a gateway request (`request.gateway`); the
/// rest of `job` (kind, requirements, preferences) routes it as any job.
#[allow(clippy::too_many_arguments)]
pub fn insert_request(
    db: &dyn Db,
    now: i64,
    sealer: &Sealer,
    default_max_attempts: u32,
    submitted_by: &str,
    class: PriorityClass,
    job: &SubmitJob,
    request: &kobo_protocol::LlmRequest,
    changes: &mut Changes,
) -> Result<SubmitResponse, StoreError> {
    if let Some(key) = &job.idempotency_key
        && let Some(earlier) = earlier_job(db, key)?
    {
        return Ok(earlier);
    }
    let run_at = job.run_at.unwrap_or(now);
    let state = if run_at > now {
        JobState::Scheduled
    } else {
        JobState::Queued
    };
    let gateway = request.gateway.as_ref().map(|call| call.api.path());
    let request =
        serde_json::to_string(request).map_err(|e| StoreError::Corrupt(format!("request: {e}")))?;
    // A confidential prompt never reaches the database in the clear.
    let request = if job.requirements.confidential {
        sealer.seal("request", &request)
    } else {
        request
    };
    let req = &job.requirements;
    // A session's job prefers the node that served the session last (unless
    // it names a node itself), waiting for it only the short session bound.
    let session_node: Option<String> = match (&job.session, &job.preferences.node) {
        (Some(session), None) => {
            db.optional(SELECT_SESSION_NODE, args![session, submitted_by], |r| {
                r.get(0)
            })?
        }
        _ => None,
    };
    let prefer_node = session_node.as_ref().or(job.preferences.node.as_ref());
    // A plain insert and the new row id: `INSERT … RETURNING` builds a
    // temporary table on every run, which cost more than the insert.
    let inserted = db.insert_id(
        db.pick(INSERT_JOB, INSERT_JOB_PG),
        args![
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
            prefer_node,
            job.max_attempts.unwrap_or(default_max_attempts),
            job.timeout_ms.map(|t| t as i64),
            job.idempotency_key,
            run_at,
            (state == JobState::Queued).then_some(now),
            now,
            submitted_by,
            gateway,
            class.rank(),
            job.session,
        ],
    )?;
    let id = match (inserted, &job.idempotency_key) {
        (Some(id), _) => id,
        (None, Some(key)) => {
            return earlier_job(db, key)?.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "idempotency key {key:?}: insert conflicted, no job"
                ))
            });
        }
        (None, None) => return Err(StoreError::Corrupt("job insert inserted nothing".into())),
    };
    insert_event(
        db,
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
                prefer_node: prefer_node.cloned(),
                session: session_node.is_some(),
            },
            locality_until: None,
            submitted_by: submitted_by.to_string(),
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

/// The columns of a job that writes decide on.
pub(super) struct JobRow {
    pub(super) state: JobState,
    pub(super) node_id: Option<String>,
    pub(super) lease_token: i64,
    pub(super) attempts: u32,
    pub(super) max_attempts: u32,
    pub(super) route: JobRoute,
    pub(super) locality_until: Option<i64>,
    pub(super) submitted_by: String,
}

/// The earlier job of an idempotency key, as a repeated submit answers.
fn earlier_job(db: &dyn Db, key: &str) -> Result<Option<SubmitResponse>, StoreError> {
    db.optional(FIND_BY_IDEMPOTENCY_KEY, args![key], |r| {
        Ok(SubmitResponse {
            id: r.get(0)?,
            state: parse_state(&r.get::<String>(1)?)?,
            created: false,
        })
    })
}

pub(super) fn job_row(db: &dyn Db, job_id: JobId) -> Result<JobRow, StoreError> {
    db.optional(
        db.pick(SELECT_JOB_ROW, SELECT_JOB_ROW_PG),
        args![job_id],
        |r| {
            Ok(JobRow {
                state: parse_state(&r.get::<String>(0)?)?,
                node_id: r.get(1)?,
                lease_token: r.get(2)?,
                attempts: r.get(3)?,
                max_attempts: r.get(4)?,
                route: JobRoute {
                    needs: JobNeeds {
                        kind: r.get(5)?,
                        capabilities: parse_list(&r.get::<String>(6)?)?,
                        gpu: r.get(7)?,
                        confidential: r.get(8)?,
                        data_location: r.get(9)?,
                        model: r.get(10)?,
                    },
                    prefer_region: r.get(11)?,
                    prefer_node: r.get(12)?,
                    session: r.get(15)?,
                },
                locality_until: r.get(13)?,
                submitted_by: r.get::<Option<String>>(14)?.unwrap_or_default(),
            })
        },
    )?
    .ok_or(StoreError::JobNotFound(job_id))
}

/// Applies an agent's report on an attempt. A report without the current
/// lease token changes nothing and is a [`StoreError::StaleLease`].
pub fn complete_job(
    db: &dyn Db,
    now: i64,
    sealer: &Sealer,
    retry: Retry,
    job_id: JobId,
    report: &CompleteRequest,
    changes: &mut Changes,
) -> Result<CompleteResponse, StoreError> {
    let row = job_row(db, job_id)?;
    let holds = row.state == JobState::Leased
        && row.lease_token == report.lease_token
        && row.node_id.as_deref() == Some(report.node_id.as_str());
    if !holds {
        let earlier: Option<(String, String)> = db.optional(
            SELECT_ATTEMPT_OUTCOME,
            args![job_id, report.lease_token],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
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
                job_id,
                submitted_by: row.submitted_by.clone(),
                node_id: report.node_id.clone(),
                kind: row.route.needs.kind.clone(),
                model: row.route.needs.model.clone(),
                duration_ms: output.usage.duration_ms,
                prompt_tokens: output.usage.prompt_tokens,
                completion_tokens: output.usage.completion_tokens,
            });
            let result = serde_json::to_string(output)
                .map_err(|e| StoreError::Corrupt(format!("result: {e}")))?;
            let result = if row.route.needs.confidential {
                sealer.seal("result", &result)
            } else {
                result
            };
            db.execute(
                "UPDATE jobs SET state = 'succeeded', result = ?2, finished_at = ?3, updated_at = ?3, lease_expires_at = NULL, last_error = NULL WHERE id = ?1",
                args![job_id, result, now],
            )?;
            db.execute(
                FINISH_ATTEMPT,
                args![
                    job_id,
                    report.lease_token,
                    now,
                    "succeeded",
                    None::<String>,
                    output.usage.prompt_tokens as i64,
                    output.usage.completion_tokens as i64,
                    output.usage.duration_ms as i64
                ],
            )?;
            db.execute(
                "UPDATE nodes SET jobs_succeeded = jobs_succeeded + 1 WHERE node_id = ?1",
                args![node_id],
            )?;
            insert_event(
                db,
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
            add_usage(db, now, &row.submitted_by, node_id, output)?;
            changes.finished.push(job_id);
            changes.freed.push((row.submitted_by.clone(), job_id));
            JobState::Succeeded
        }
        Outcome::Failed { error, retryable } => {
            db.execute(
                "UPDATE nodes SET jobs_failed = jobs_failed + 1 WHERE node_id = ?1",
                args![node_id],
            )?;
            let retry_at = retryable
                .then(|| now + retry.backoff.delay_ms(row.attempts, retry.unit_random) as i64);
            end_attempt(db, now, job_id, &row, "failed", error, retry_at, changes)?
        }
    };
    Ok(CompleteResponse {
        job_id,
        state,
        duplicate: false,
    })
}

/// Adds a successful attempt to the usage of its submitter, model, node and
/// hour, exactly as the LLM server reported it. (The old row's columns
/// are qualified: PostgreSQL finds `requests` alone ambiguous.)
pub const ADD_USAGE: &str = "INSERT INTO usage (hour, key, model, node_id, requests, prompt_tokens, completion_tokens, llm_ms) VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7) ON CONFLICT (hour, key, model, node_id) DO UPDATE SET requests = usage.requests + 1, prompt_tokens = usage.prompt_tokens + excluded.prompt_tokens, completion_tokens = usage.completion_tokens + excluded.completion_tokens, llm_ms = usage.llm_ms + excluded.llm_ms";

/// Tokens (prompt and completion) `key`'s successful attempts reported in
/// the hours from `since` (a budget period's start, on an hour).
pub const TOKENS_USED_SINCE: &str = "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM usage WHERE key = ?1 AND hour >= ?2";
/// PostgreSQL's `sum` of `bigint` is `numeric`.
pub const TOKENS_USED_SINCE_PG: &str = "SELECT CAST(coalesce(sum(prompt_tokens + completion_tokens), 0) AS BIGINT) FROM usage WHERE key = ?1 AND hour >= ?2";

pub fn tokens_used_since(db: &dyn Db, key: &str, since: i64) -> Result<u64, StoreError> {
    let used: i64 = db.one(
        db.pick(TOKENS_USED_SINCE, TOKENS_USED_SINCE_PG),
        args![key, since],
        |r| r.get(0),
    )?;
    Ok(used.max(0) as u64)
}

/// How many of `jobs` are new requests: all but repeats of a known
/// idempotency key (answered with their earlier job).
pub fn new_requests<'a>(
    db: &dyn Db,
    jobs: impl Iterator<Item = &'a SubmitJob>,
) -> Result<u32, StoreError> {
    let mut n = 0;
    for job in jobs {
        let repeated = match &job.idempotency_key {
            Some(key) => idempotency_known(db, key)?,
            None => false,
        };
        n += u32::from(!repeated);
    }
    Ok(n)
}

/// Whether a job with idempotency key `key` exists (a repeated submit,
/// answered with that job: not a new request for the rate limits).
pub fn idempotency_known(db: &dyn Db, key: &str) -> Result<bool, StoreError> {
    Ok(db
        .optional(FIND_BY_IDEMPOTENCY_KEY, args![key], |_| Ok(()))?
        .is_some())
}

fn add_usage(
    db: &dyn Db,
    now: i64,
    submitted_by: &str,
    node_id: &str,
    output: &LlmOutput,
) -> Result<(), StoreError> {
    let hour = now - now.rem_euclid(3_600_000);
    db.execute(
        ADD_USAGE,
        args![
            hour,
            submitted_by,
            output.model,
            node_id,
            output.usage.prompt_tokens as i64,
            output.usage.completion_tokens as i64,
            output.usage.duration_ms as i64
        ],
    )?;
    Ok(())
}

/// Ends the current attempt of a leased job that did not succeed: the job is
/// retried (at `retry_at`, or at once when `None`) while attempts remain, and
/// is `dead` with `error` kept otherwise. A `failed` outcome without
/// `retry_at` is not retryable and goes to `dead` at once.
#[allow(clippy::too_many_arguments)]
pub(super) fn end_attempt(
    db: &dyn Db,
    now: i64,
    job_id: JobId,
    row: &JobRow,
    outcome: &str,
    error: &str,
    retry_at: Option<i64>,
    changes: &mut Changes,
) -> Result<JobState, StoreError> {
    let node_id = row.node_id.as_deref();
    db.execute(
        FINISH_ATTEMPT,
        args![
            job_id,
            row.lease_token,
            now,
            outcome,
            error,
            None::<i64>,
            None::<i64>,
            None::<i64>
        ],
    )?;
    changes.freed.push((row.submitted_by.clone(), job_id));
    let retryable = outcome != "failed" || retry_at.is_some();
    let state = if !retryable || row.attempts >= row.max_attempts {
        db.execute(
            "UPDATE jobs SET state = 'dead', last_error = ?2, finished_at = ?3, updated_at = ?3, lease_expires_at = NULL WHERE id = ?1",
            args![job_id, error, now],
        )?;
        changes.finished.push(job_id);
        JobState::Dead
    } else if let Some(at) = retry_at.filter(|at| *at > now) {
        db.execute(
            "UPDATE jobs SET state = 'scheduled', last_error = ?2, run_at = ?3, updated_at = ?4, lease_expires_at = NULL WHERE id = ?1",
            args![job_id, error, at, now],
        )?;
        changes.scheduled = true;
        JobState::Scheduled
    } else {
        db.execute(
            "UPDATE jobs SET state = 'queued', last_error = ?2, ready_at = ?3, updated_at = ?3, lease_expires_at = NULL WHERE id = ?1",
            args![job_id, error, now],
        )?;
        changes.ready.push(ReadyJob {
            id: job_id,
            route: row.route.clone(),
            locality_until: row.locality_until,
            submitted_by: row.submitted_by.clone(),
        });
        JobState::Queued
    };
    let detail = format!("{outcome}: {error}");
    insert_event(
        db,
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

/// Cancels a job. Queued and scheduled jobs end at once; a leased job ends
/// too, and its agent learns it from its next heartbeat answer.
pub fn cancel_job(
    db: &dyn Db,
    now: i64,
    job_id: JobId,
    changes: &mut Changes,
) -> Result<JobState, StoreError> {
    let row = job_row(db, job_id)?;
    if row.state.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "job {job_id} is already {}",
            row.state
        )));
    }
    db.execute(
        "UPDATE jobs SET state = 'cancelled', finished_at = ?2, updated_at = ?2 WHERE id = ?1",
        args![job_id, now],
    )?;
    if row.state == JobState::Leased {
        db.execute(
            FINISH_ATTEMPT,
            args![
                job_id,
                row.lease_token,
                now,
                "cancelled",
                None::<String>,
                None::<i64>,
                None::<i64>,
                None::<i64>
            ],
        )?;
        changes.freed.push((row.submitted_by.clone(), job_id));
    }
    insert_event(
        db,
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
