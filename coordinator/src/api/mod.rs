//! The HTTPS API: routes, handlers and their state. Handlers validate input,
//! call [`crate::queue::Queue`] and map the answer; they never see SQL.
//!
//! Client routes live under `/v1/jobs` and `/v1/nodes`; agent routes under
//! `/v1/agent`. The Security issue adds per-route roles on top of this layout.

mod error;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use kobo_protocol::{
    CompleteRequest, CompleteResponse, HeartbeatRequest, HeartbeatResponse, JobDetail, JobId,
    JobList, JobListQuery, JobState, JobView, LeaseRequest, LeaseResponse, NodeStatus, NodeView,
    RegisterRequest, RegisterResponse, SubmitBatch, SubmitBatchResponse, SubmitJob, SubmitResponse,
    WaitQuery,
};
use rustls_pki_types::CertificateDer;

pub use error::{ApiError, ApiJson, ApiPath, ApiQuery};

use crate::queue::Queue;
use crate::routing::{self, JobNeeds, NodeProfile};
use crate::store::{self, StoreError};
use crate::validate;

/// Largest request body on any route; the batch route needs the most.
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Longest a client may block in `GET /v1/jobs/{id}/wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// What the accept loop knows about the connection, put on every request.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// The verified client certificate chain, when the client sent one.
    pub client_certs: Option<Vec<CertificateDer<'static>>>,
}

#[derive(Clone)]
pub struct AppState {
    pub queue: Queue,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/jobs", post(jobs_create).get(jobs_list))
        .route("/v1/jobs/batch", post(jobs_create_batch))
        .route("/v1/jobs/{id}", get(jobs_get))
        .route("/v1/jobs/{id}/wait", get(jobs_wait))
        .route("/v1/jobs/{id}/cancel", post(jobs_cancel))
        .route("/v1/nodes", get(nodes_list))
        .route("/v1/agent/register", post(agent_register))
        .route("/v1/agent/lease", post(agent_lease))
        .route("/v1/agent/heartbeat", post(agent_heartbeat))
        .route("/v1/agent/jobs/{id}/complete", post(agent_complete))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn jobs_create(
    State(state): State<AppState>,
    ApiJson(job): ApiJson<SubmitJob>,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    validate::submit(&job, "")?;
    let mut answers = state.queue.submit(vec![job]).await?;
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

async fn jobs_create_batch(
    State(state): State<AppState>,
    ApiJson(batch): ApiJson<SubmitBatch>,
) -> Result<(StatusCode, Json<SubmitBatchResponse>), ApiError> {
    validate::batch(&batch.jobs)?;
    let jobs = state.queue.submit(batch.jobs).await?;
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

async fn jobs_list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<JobListQuery>,
) -> Result<Json<JobList>, ApiError> {
    if let Some(node) = &query.node_id {
        validate::name("node_id", node)?;
    }
    let mut jobs = state
        .queue
        .store
        .read(move |conn| store::list_jobs(conn, &query))
        .await?;
    explain_queued(&state, &mut jobs).await?;
    Ok(Json(JobList {
        jobs: jobs.into_iter().map(|(job, _)| job).collect(),
    }))
}

async fn jobs_get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<JobId>,
) -> Result<Json<JobDetail>, ApiError> {
    let (detail, needs) = state
        .queue
        .store
        .read(move |conn| store::job_detail(conn, id)?.ok_or(StoreError::JobNotFound(id)))
        .await?;
    let mut one = [(detail.job.clone(), needs)];
    explain_queued(&state, &mut one).await?;
    let [(job, _)] = one;
    Ok(Json(JobDetail { job, ..detail }))
}

async fn jobs_wait(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<JobId>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<JobView>, ApiError> {
    let timeout = Duration::from_millis(query.timeout_ms.unwrap_or(30_000)).min(MAX_WAIT);
    Ok(Json(state.queue.wait(id, timeout).await?))
}

async fn jobs_cancel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<JobId>,
) -> Result<Json<JobView>, ApiError> {
    let before = state.queue.cancel(id).await?;
    tracing::info!(job_id = id, from = %before, "job cancelled");
    Ok(Json(state.queue.get(id).await?))
}

async fn nodes_list(State(state): State<AppState>) -> Result<Json<Vec<NodeView>>, ApiError> {
    Ok(Json(state.queue.store.read(store::list_nodes).await?))
}

async fn agent_register(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerInfo>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ApiError> {
    validate::register(&req)?;
    tracing::debug!(node_id = %req.node_id, peer = %peer.addr, "register");
    Ok(Json(state.queue.register(req).await?))
}

async fn agent_lease(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LeaseRequest>,
) -> Result<Json<LeaseResponse>, ApiError> {
    validate::lease(&req)?;
    let leases = state.queue.lease(req).await?;
    Ok(Json(LeaseResponse { leases }))
}

async fn agent_heartbeat(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    validate::heartbeat(&req)?;
    Ok(Json(state.queue.heartbeat(req).await?))
}

async fn agent_complete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<JobId>,
    ApiJson(req): ApiJson<CompleteRequest>,
) -> Result<Json<CompleteResponse>, ApiError> {
    validate::complete(&req)?;
    Ok(Json(state.queue.complete(id, req).await?))
}
