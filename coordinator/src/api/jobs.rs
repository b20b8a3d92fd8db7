//! Client routes: jobs and nodes.

use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use kobo_protocol::{
    JobDetail, JobId, JobList, JobListQuery, JobState, JobView, NodeStatus, NodeView, SubmitBatch,
    SubmitBatchResponse, SubmitJob, SubmitResponse, WaitQuery,
};

use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, MAX_WAIT};
use crate::access::Caller;
use crate::queue::reveal_only_of;
use crate::routing::{self, JobNeeds, NodeProfile};
use crate::store::{self, StoreError};
use crate::validate;

/// Maps a refusal to 403 and audits it; other errors as usual.
async fn audited(state: &AppState, caller: &Caller, action: &str, err: StoreError) -> ApiError {
    if let StoreError::Forbidden(why) = &err {
        let entry = crate::admin::record(caller, action, None, "denied", Some(why.clone()));
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

/// Fills in why queued jobs wait, from the nodes as they are now.
async fn explain_queued(
    state: &AppState,
    jobs: &mut [(JobView, JobNeeds)],
) -> Result<(), ApiError> {
    if !jobs.iter().any(|(job, _)| job.state == JobState::Queued) {
        return Ok(());
    }
    let nodes = state.queue.store.read(store::list_nodes).await?;
    for (job, needs) in jobs.iter_mut() {
        if job.state == JobState::Queued {
            job.queue_reason = Some(queue_reason(needs, &nodes));
        }
    }
    Ok(())
}

/// Why a queued job is not running: no live node may run it (and why each
/// is excluded), or the nodes that may are busy.
pub fn queue_reason(needs: &JobNeeds, nodes: &[NodeView]) -> String {
    let mut eligible = Vec::new();
    let mut excluded = Vec::new();
    for node in nodes {
        let profile = NodeProfile {
            node_id: node.node_id.clone(),
            region: node.region.clone(),
            capabilities: node.capabilities.clone(),
            gpu: node.gpu,
            models: node.models.clone(),
            max_workers: node.max_workers,
        };
        let verdict = match routing::check(needs, &profile) {
            Err(why) => Err(why),
            Ok(()) if node.status != NodeStatus::Active => {
                Err(routing::Exclusion::Status(node.status))
            }
            Ok(()) => Ok(()),
        };
        match verdict {
            Ok(()) => eligible.push(node.node_id.clone()),
            Err(why) => excluded.push(format!("{} {why}", node.node_id)),
        }
    }
    if nodes.is_empty() {
        "no node has registered".to_string()
    } else if eligible.is_empty() {
        format!("no live node can run it: {}", excluded.join("; "))
    } else {
        format!("waiting for a free worker on {}", eligible.join(", "))
    }
}

pub(super) async fn jobs_list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(query): ApiQuery<JobListQuery>,
) -> Result<Json<JobList>, ApiError> {
    if let Some(node) = &query.node_id {
        validate::name("node_id", node)?;
    }
    let hub = state.queue.hub.clone();
    let only_of = reveal_only_of(&caller);
    let mut jobs = state
        .queue
        .store
        .read(move |conn| {
            let reveal = store::Reveal {
                sealer: &hub.sealer,
                only_of: only_of.as_deref(),
            };
            store::list_jobs(conn, &query, &reveal)
        })
        .await?;
    explain_queued(&state, &mut jobs).await?;
    Ok(Json(JobList {
        jobs: jobs.into_iter().map(|(job, _)| job).collect(),
    }))
}

pub(super) async fn jobs_get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<JobId>,
) -> Result<Json<JobDetail>, ApiError> {
    let hub = state.queue.hub.clone();
    let only_of = reveal_only_of(&caller);
    let (detail, needs) = state
        .queue
        .store
        .read(move |conn| {
            let reveal = store::Reveal {
                sealer: &hub.sealer,
                only_of: only_of.as_deref(),
            };
            store::job_detail(conn, id, &reveal)?.ok_or(StoreError::JobNotFound(id))
        })
        .await?;
    let mut one = [(detail.job.clone(), needs)];
    explain_queued(&state, &mut one).await?;
    let [(job, _)] = one;
    Ok(Json(JobDetail { job, ..detail }))
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
    Ok(Json(state.queue.store.read(store::list_nodes).await?))
}
