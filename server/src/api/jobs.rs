//! Client routes: jobs and nodes.

use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use kobo_protocol::{
    JobDetail, JobId, JobList, JobListQuery, JobView, NodeView, SubmitBatch, SubmitBatchResponse,
    SubmitJob, SubmitResponse, WaitQuery,
};

use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, MAX_WAIT};
use kobo_protocol::validate;
use kobo_queue::StoreError;
use kobo_queue::access::Caller;

/// Maps a refusal to 403 and audits it; other errors as usual.
async fn audited(state: &AppState, caller: &Caller, action: &str, err: StoreError) -> ApiError {
    if let StoreError::Forbidden(why) = &err {
        let entry = kobo_queue::admin::record(caller, action, None, "denied", Some(why.clone()));
        if let Err(audit) = state.admin.audit(entry).await {
            tracing::error!(error = %audit, "could not audit a refusal");
        }
    }
    err.into()
}

pub(super) async fn jobs_create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(job): ApiJson<SubmitJob>,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    validate::submit(&job, "")?;
    let mut answers = state.queue.submit(&caller, vec![job]).await?;
    let answer = answers
        .pop()
        .ok_or_else(|| ApiError::from(StoreError::Corrupt("submit returned nothing".into())))?;
    let status = if answer.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)))
}

pub(super) async fn jobs_create_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(batch): ApiJson<SubmitBatch>,
) -> Result<(StatusCode, Json<SubmitBatchResponse>), ApiError> {
    validate::batch(&batch.jobs)?;
    let jobs = state.queue.submit(&caller, batch.jobs).await?;
    Ok((StatusCode::CREATED, Json(SubmitBatchResponse { jobs })))
}

pub(super) async fn jobs_list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(query): ApiQuery<JobListQuery>,
) -> Result<Json<JobList>, ApiError> {
    if let Some(node) = &query.node_id {
        validate::name("node_id", node)?;
    }
    Ok(Json(state.queue.list_jobs(&caller, query).await?))
}

pub(super) async fn jobs_get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<JobId>,
) -> Result<Json<JobDetail>, ApiError> {
    let mut detail = state.queue.job_detail(&caller, id).await?;
    if let Some(place) = place_in_queue(&state, id).await {
        detail.job.queue_position = Some(place.position);
        detail.job.estimated_start_at = place.estimated_start_at;
    }
    Ok(Json(detail))
}

/// A queued job's place in its kind's queue and when it should start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Place {
    pub position: u64,
    pub estimated_start_at: Option<i64>,
}

/// Where job `id` stands in the queue, if it is queued: the jobs leased
/// before it, and its expected start from the rate jobs finish at now
/// (none when nothing finished lately). A failure to tell is logged and
/// answered with nothing: it is a hint, not a state.
pub(crate) async fn place_in_queue(state: &AppState, id: JobId) -> Option<Place> {
    let position = match state.queue.queue_position(id).await {
        Ok(position) => position?,
        Err(err) => {
            tracing::warn!(job_id = id, error = %err, "reading a job's place in the queue");
            return None;
        }
    };
    let estimated_start_at = state.queue.finish_rate().map(|per_sec| {
        let wait_ms = (position + 1) as f64 / per_sec * 1000.0;
        kobo_queue::unix_now_ms() + wait_ms.round() as i64
    });
    Some(Place {
        position,
        estimated_start_at,
    })
}

pub(super) async fn jobs_wait(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<JobId>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<JobView>, ApiError> {
    let timeout = Duration::from_millis(query.timeout_ms.unwrap_or(30_000)).min(MAX_WAIT);
    Ok(Json(state.queue.wait(&caller, id, timeout).await?))
}

pub(super) async fn jobs_cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<JobId>,
) -> Result<Json<JobView>, ApiError> {
    let before = match state.queue.cancel(&caller, id).await {
        Ok(before) => before,
        Err(err) => return Err(audited(&state, &caller, "job.cancel", err).await),
    };
    tracing::info!(job_id = id, from = %before, "job cancelled");
    Ok(Json(state.queue.get(&caller, id).await?))
}

pub(super) async fn nodes_list(
    State(state): State<AppState>,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    Ok(Json(state.queue.nodes().await?))
}
