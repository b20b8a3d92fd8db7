//! Job reads for clients: one job, its attempts and events, and listings.

use kobo_protocol::{
    AttemptView, JobDetail, JobEventView, JobId, JobListQuery, JobView, LlmOutput, LlmRequest,
    Preferences, Requirements,
};
use rusqlite::{Connection, OptionalExtension, Row, params_from_iter, types::Value};

use super::{StoreError, parse_list, parse_state};
use crate::routing::JobNeeds;

const JOB_COLUMNS: &str = "id, state, kind, model, priority, attempts, max_attempts, node_id, lease_token, created_at, updated_at, run_at, finished_at, last_error, queue_reason, idempotency_key, result";
pub const SELECT_JOB: &str = "SELECT id, state, kind, model, priority, attempts, max_attempts, node_id, lease_token, created_at, updated_at, run_at, finished_at, last_error, queue_reason, idempotency_key, result, request, req_capabilities, req_gpu, confidential, data_location, prefer_region, prefer_node, timeout_ms FROM jobs WHERE id = ?1";
pub const SELECT_ATTEMPTS: &str = "SELECT attempt, lease_token, node_id, started_at, finished_at, outcome, error FROM job_attempts WHERE job_id = ?1 ORDER BY lease_token";
pub const SELECT_EVENTS: &str = "SELECT at, from_state, to_state, node_id, attempt, detail FROM job_events WHERE job_id = ?1 ORDER BY id";

/// Most jobs one listing returns.
pub const MAX_LIST: u32 = 10_000;
/// Jobs a listing returns when the query names no limit.
pub const DEFAULT_LIST: u32 = 100;

fn job_view(r: &Row<'_>) -> Result<JobView, StoreError> {
    let result: Option<String> = r.get(16)?;
    let output = match result {
        Some(text) => Some(
            serde_json::from_str::<LlmOutput>(&text)
                .map_err(|e| StoreError::Corrupt(format!("result: {e}")))?,
        ),
        None => None,
    };
    Ok(JobView {
        id: r.get(0)?,
        state: parse_state(&r.get::<_, String>(1)?)?,
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
        idempotency_key: r.get(15)?,
        output,
    })
}

/// One job with everything known about it; `None` if there is no such job.
pub fn job_detail(
    conn: &Connection,
    job_id: JobId,
) -> Result<Option<(JobDetail, JobNeeds)>, StoreError> {
    let mut stmt = conn.prepare_cached(SELECT_JOB)?;
    let mut rows = stmt.query([job_id])?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    let job = job_view(r)?;
    let request: LlmRequest = serde_json::from_str(&r.get::<_, String>(17)?)
        .map_err(|e| StoreError::Corrupt(format!("request: {e}")))?;
    let requirements = Requirements {
        capabilities: parse_list(&r.get::<_, String>(18)?)?,
        gpu: r.get(19)?,
        confidential: r.get(20)?,
        data_location: r.get(21)?,
    };
    let preferences = Preferences {
        region: r.get(22)?,
        node: r.get(23)?,
    };
    let timeout_ms: Option<i64> = r.get(24)?;
    drop(rows);
    let attempts = conn
        .prepare_cached(SELECT_ATTEMPTS)?
        .query_map([job_id], |r| {
            Ok(AttemptView {
                attempt: r.get(0)?,
                lease_token: r.get(1)?,
                node_id: r.get(2)?,
                started_at: r.get(3)?,
                finished_at: r.get(4)?,
                outcome: r.get(5)?,
                error: r.get(6)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut events = Vec::new();
    let mut stmt = conn.prepare_cached(SELECT_EVENTS)?;
    let mut rows = stmt.query([job_id])?;
    while let Some(r) = rows.next()? {
        events.push(JobEventView {
            at: r.get(0)?,
            from_state: r
                .get::<_, Option<String>>(1)?
                .map(|s| parse_state(&s))
                .transpose()?,
            to_state: parse_state(&r.get::<_, String>(2)?)?,
            node_id: r.get(3)?,
            attempt: r.get(4)?,
            detail: r.get(5)?,
        });
    }
    let needs = JobNeeds {
        kind: job.kind.clone(),
        capabilities: requirements.capabilities.clone(),
        gpu: requirements.gpu,
        confidential: requirements.confidential,
        data_location: requirements.data_location.clone(),
        model: job.model.clone(),
    };
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
pub fn get_job(conn: &Connection, job_id: JobId) -> Result<Option<JobView>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([job_id])?;
    rows.next()?.map(job_view).transpose()
}

/// Jobs matching `query`, newest first, with what each needs of a node.
pub fn list_jobs(
    conn: &Connection,
    query: &JobListQuery,
) -> Result<Vec<(JobView, JobNeeds)>, StoreError> {
    let mut clauses = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    if let Some(state) = query.state {
        args.push(Value::Text(state.as_str().into()));
        clauses.push(format!("state = ?{}", args.len()));
    }
    if let Some(kind) = &query.kind {
        args.push(Value::Text(kind.clone()));
        clauses.push(format!("kind = ?{}", args.len()));
    }
    if let Some(node) = &query.node_id {
        args.push(Value::Text(node.clone()));
        clauses.push(format!("node_id = ?{}", args.len()));
    }
    if let Some(before) = query.before_id {
        args.push(Value::Integer(before));
        clauses.push(format!("id < ?{}", args.len()));
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIST).min(MAX_LIST);
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let sql = format!(
        "SELECT {JOB_COLUMNS}, req_capabilities, req_gpu, confidential, data_location FROM jobs {filter} ORDER BY id DESC LIMIT {limit}"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut jobs = Vec::new();
    while let Some(r) = rows.next()? {
        let job = job_view(r)?;
        let needs = JobNeeds {
            kind: job.kind.clone(),
            capabilities: parse_list(&r.get::<_, String>(17)?)?,
            gpu: r.get(18)?,
            confidential: r.get(19)?,
            data_location: r.get(20)?,
            model: job.model.clone(),
        };
        jobs.push((job, needs));
    }
    Ok(jobs)
}

/// Whether a job exists (for 404s).
pub fn job_exists(conn: &Connection, job_id: JobId) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?
        .query_row([job_id], |_| Ok(()))
        .optional()?
        .is_some())
}
