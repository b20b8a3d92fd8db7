//! Job reads for clients: one job, its attempts and events, and listings.
//! Confidential jobs' prompts and results are opened only for callers the
//! [`Reveal`] allows, and withheld (`redacted`) from the others.

use kobo_protocol::{
    AttemptView, JobDetail, JobEventView, JobId, JobListQuery, JobView, LlmOutput, LlmRequest,
    Preferences, Requirements,
};

use super::sql::{Db, Param, Row, args};
use super::{StoreError, parse_list, parse_state};
use crate::routing::JobNeeds;
use crate::security::Sealer;

const JOB_COLUMNS: &str = "id, state, kind, model, priority, attempts, max_attempts, node_id, lease_token, created_at, updated_at, run_at, finished_at, last_error, queue_reason, idempotency_key, result, confidential, submitted_by, req_capabilities, req_gpu, data_location, route_reason";
/// Columns after [`JOB_COLUMNS`] in [`SELECT_JOB`].
const DETAIL_FIRST: usize = 23;
pub const SELECT_JOB: &str = "SELECT id, state, kind, model, priority, attempts, max_attempts, node_id, lease_token, created_at, updated_at, run_at, finished_at, last_error, queue_reason, idempotency_key, result, confidential, submitted_by, req_capabilities, req_gpu, data_location, route_reason, request, prefer_region, prefer_node, timeout_ms FROM jobs WHERE id = ?1";
pub const SELECT_ATTEMPTS: &str = "SELECT attempt, lease_token, node_id, started_at, finished_at, outcome, error FROM job_attempts WHERE job_id = ?1 ORDER BY lease_token";
pub const SELECT_EVENTS: &str = "SELECT at, from_state, to_state, node_id, attempt, detail FROM job_events WHERE job_id = ?1 ORDER BY id";

/// Most jobs one listing returns.
pub const MAX_LIST: u32 = 10_000;
/// Jobs a listing returns when the query names no limit.
pub const DEFAULT_LIST: u32 = 100;

/// Who may see confidential prompts and results.
pub struct Reveal<'a> {
    pub sealer: &'a Sealer,
    /// `None`: everyone's (admins). `Some(actor)`: only jobs this actor
    /// submitted.
    pub only_of: Option<&'a str>,
}

impl Reveal<'_> {
    fn allows(&self, submitted_by: Option<&str>) -> bool {
        match self.only_of {
            None => true,
            Some(actor) => submitted_by == Some(actor),
        }
    }
}

/// A job row's summary, and whether its sealed data may be opened.
fn job_view(r: &Row<'_>, reveal: &Reveal<'_>) -> Result<(JobView, JobNeeds), StoreError> {
    let confidential: bool = r.get(17)?;
    let submitted_by: Option<String> = r.get(18)?;
    let redacted = confidential && !reveal.allows(submitted_by.as_deref());
    let result: Option<String> = r.get(16)?;
    let output = match result {
        Some(_) if redacted => None,
        Some(text) => {
            let text = reveal
                .sealer
                .open("result", &text)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Some(
                serde_json::from_str::<LlmOutput>(&text)
                    .map_err(|e| StoreError::Corrupt(format!("result: {e}")))?,
            )
        }
        None => None,
    };
    let job = JobView {
        id: r.get(0)?,
        state: parse_state(&r.get::<String>(1)?)?,
        kind: r.get(2)?,
        model: r.get(3)?,
        priority: r.get(4)?,
        attempts: r.get(5)?,
        max_attempts: r.get(6)?,
        node_id: r.get(7)?,
        lease_token: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
        run_at: r.get(11)?,
        finished_at: r.get(12)?,
        last_error: r.get(13)?,
        queue_reason: r.get(14)?,
        queue_position: None,
        estimated_start_at: None,
        idempotency_key: r.get(15)?,
        confidential,
        submitted_by,
        redacted,
        route_reason: parse_route_reason(r.get(22)?),
        output,
    };
    let needs = JobNeeds {
        kind: job.kind.clone(),
        capabilities: parse_list(&r.get::<String>(19)?)?,
        gpu: r.get(20)?,
        confidential,
        data_location: r.get(21)?,
        model: job.model.clone(),
    };
    Ok((job, needs))
}

/// One job with everything known about it; `None` if there is no such job.
pub fn job_detail(
    db: &dyn Db,
    job_id: JobId,
    reveal: &Reveal<'_>,
) -> Result<Option<(JobDetail, JobNeeds)>, StoreError> {
    let found = db.optional(SELECT_JOB, args![job_id], |r| {
        let (job, needs) = job_view(r, reveal)?;
        let request = if job.redacted {
            LlmRequest {
                model: job.model.clone(),
                ..LlmRequest::default()
            }
        } else {
            let text = reveal
                .sealer
                .open("request", &r.get::<String>(DETAIL_FIRST)?)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("request: {e}")))?
        };
        let preferences = Preferences {
            region: r.get(DETAIL_FIRST + 1)?,
            node: r.get(DETAIL_FIRST + 2)?,
        };
        let timeout_ms: Option<i64> = r.get(DETAIL_FIRST + 3)?;
        Ok((job, needs, request, preferences, timeout_ms))
    })?;
    let Some((job, needs, request, preferences, timeout_ms)) = found else {
        return Ok(None);
    };
    let requirements = Requirements {
        capabilities: needs.capabilities.clone(),
        gpu: needs.gpu,
        confidential: needs.confidential,
        data_location: needs.data_location.clone(),
    };
    let attempts = db.many(SELECT_ATTEMPTS, args![job_id], |r| {
        Ok(AttemptView {
            attempt: r.get(0)?,
            lease_token: r.get(1)?,
            node_id: r.get(2)?,
            started_at: r.get(3)?,
            finished_at: r.get(4)?,
            outcome: r.get(5)?,
            error: r.get(6)?,
        })
    })?;
    let events = db.many(SELECT_EVENTS, args![job_id], |r| {
        Ok(JobEventView {
            at: r.get(0)?,
            from_state: r
                .get::<Option<String>>(1)?
                .map(|s| parse_state(&s))
                .transpose()?,
            to_state: parse_state(&r.get::<String>(2)?)?,
            node_id: r.get(3)?,
            attempt: r.get(4)?,
            detail: r.get(5)?,
        })
    })?;
    Ok(Some((
        JobDetail {
            job,
            request,
            requirements,
            preferences,
            timeout_ms: timeout_ms.map(|t| t as u64),
            attempts,
            events,
        },
        needs,
    )))
}

/// One job's summary; `None` if there is no such job.
pub fn get_job(
    db: &dyn Db,
    job_id: JobId,
    reveal: &Reveal<'_>,
) -> Result<Option<JobView>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
    db.optional(&sql, args![job_id], |r| {
        job_view(r, reveal).map(|(job, _)| job)
    })
}

/// Jobs matching `query`, newest first, with what each needs of a node.
pub fn list_jobs(
    db: &dyn Db,
    query: &JobListQuery,
    reveal: &Reveal<'_>,
) -> Result<JobPage, StoreError> {
    let mut clauses = Vec::new();
    let mut args: Vec<&dyn Param> = Vec::new();
    let state = query.state.map(|s| s.as_str());
    if let Some(state) = &state {
        args.push(state);
        clauses.push(format!("state = ?{}", args.len()));
    }
    if let Some(kind) = &query.kind {
        args.push(kind);
        clauses.push(format!("kind = ?{}", args.len()));
    }
    if let Some(node) = &query.node_id {
        args.push(node);
        clauses.push(format!("node_id = ?{}", args.len()));
    }
    let where_of = |clauses: &[String]| {
        if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        }
    };
    // The total counts every page's jobs: the filters, not the cursor.
    let total: i64 = db.one(
        &format!("SELECT count(*) FROM jobs {}", where_of(&clauses)),
        &args,
        |r| r.get(0),
    )?;
    if let Some(after) = &query.after {
        args.push(after);
        clauses.push(format!("id < ?{}", args.len()));
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIST).min(MAX_LIST);
    // One row more than the page tells whether a next page exists.
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs {} ORDER BY id DESC LIMIT {}",
        where_of(&clauses),
        limit + 1
    );
    let mut jobs = db.many(&sql, &args, |r| job_view(r, reveal))?;
    let more = jobs.len() > limit as usize;
    jobs.truncate(limit as usize);
    Ok(JobPage {
        next_after: jobs.last().map(|(job, _)| job.id).filter(|_| more),
        jobs,
        total: total.max(0) as u64,
    })
}

/// One page of a listing, with the reads of what queued jobs need.
pub struct JobPage {
    pub jobs: Vec<(JobView, JobNeeds)>,
    /// Jobs matching the filters, on every page.
    pub total: u64,
    /// The cursor of the next page, if there is one.
    pub next_after: Option<JobId>,
}

/// Who submitted a job (`None`: no such job).
pub fn job_owner(db: &dyn Db, job_id: JobId) -> Result<Option<Option<String>>, StoreError> {
    db.optional(
        "SELECT submitted_by FROM jobs WHERE id = ?1",
        args![job_id],
        |r| r.get(0),
    )
}

/// A stored `route_reason` (JSON text written by the hand-off or a pull).
/// A row this version cannot read shows no reason rather than failing the
/// whole read.
pub fn parse_route_reason(text: Option<String>) -> Option<kobo_protocol::RouteReason> {
    text.and_then(|text| serde_json::from_str(&text).ok())
}

pub const SELECT_LEASE_HOLDER: &str = "SELECT state, node_id, lease_token FROM jobs WHERE id = ?1";

/// A job's state, lease holder and current lease token.
pub fn lease_holder(
    db: &dyn Db,
    job_id: JobId,
) -> Result<Option<(kobo_protocol::JobState, Option<String>, i64)>, StoreError> {
    db.optional(SELECT_LEASE_HOLDER, args![job_id], |r| {
        Ok((parse_state(&r.get::<String>(0)?)?, r.get(1)?, r.get(2)?))
    })
}

pub const SELECT_QUEUE_POSITION: &str = "SELECT (SELECT count(*) FROM jobs j WHERE j.state = 'queued' AND j.kind = me.kind \
       AND (j.class > me.class OR (j.class = me.class AND j.submitted_by = me.submitted_by \
         AND (j.priority > me.priority OR (j.priority = me.priority \
           AND (j.ready_at < me.ready_at OR (j.ready_at = me.ready_at AND j.id < me.id))))))) \
     FROM jobs me WHERE me.id = ?1 AND me.state = 'queued'";

/// How many queued jobs of `job_id`'s kind will surely be leased before it:
/// those of a higher class, and its own submitter's jobs ahead of it in the
/// lease path's order (priority, then readiness, then id). Other
/// submitters' jobs of its class interleave with its own by fair share, so
/// they are not counted. `None` unless it is queued.
pub fn queue_position(db: &dyn Db, job_id: JobId) -> Result<Option<u64>, StoreError> {
    Ok(db
        .optional(SELECT_QUEUE_POSITION, args![job_id], |r| r.get::<i64>(0))?
        .map(|n| n.max(0) as u64))
}
