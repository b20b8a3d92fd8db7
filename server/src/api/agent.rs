//! Agent routes. Each needs a node certificate, and the node it names must be
//! the certificate's (checked here, after the body is parsed).

use axum::Json;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use kobo_protocol::{
    CompleteBatchRequest, CompleteBatchResponse, CompleteRequest, HeartbeatRequest, JobId,
    LeaseRequest, LeaseResponse, RegisterRequest, RenewRequest,
};

use super::auth::ensure_node;
use super::{ApiError, ApiJson, ApiPath, AppState};
use kobo_protocol::validate;
use kobo_queue::access::Caller;

pub(super) async fn agent_register(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    validate::register(&req)?;
    if let Err(denied) = ensure_node(&state, &caller, &req.node_id).await {
        return Ok(denied);
    }
    Ok(Json(state.queue.register(req).await?).into_response())
}

pub(super) async fn agent_lease(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<LeaseRequest>,
) -> Result<Response, ApiError> {
    validate::lease(&req)?;
    if let Err(denied) = ensure_node(&state, &caller, &req.node_id).await {
        return Ok(denied);
    }
    let leases = state.queue.lease(req).await?;
    Ok(Json(LeaseResponse { leases }).into_response())
}

pub(super) async fn agent_heartbeat(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<Response, ApiError> {
    // From here the time is the coordinator's (the request has arrived
    // whole): the agent subtracts it from the call's time to measure the
    // network alone.
    let received = std::time::Instant::now();
    validate::heartbeat(&req)?;
    if let Err(denied) = ensure_node(&state, &caller, &req.node_id).await {
        return Ok(denied);
    }
    let mut answer = state.queue.heartbeat(req).await?;
    answer.coordinator_ms = received.elapsed().as_millis().min(u32::MAX as u128) as u32;
    Ok(Json(answer).into_response())
}

pub(super) async fn agent_complete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<JobId>,
    ApiJson(req): ApiJson<CompleteRequest>,
) -> Result<Response, ApiError> {
    validate::complete(&req)?;
    if let Err(denied) = ensure_node(&state, &caller, &req.node_id).await {
        return Ok(denied);
    }
    Ok(Json(state.queue.complete(id, req).await?).into_response())
}

pub(super) async fn agent_complete_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CompleteBatchRequest>,
) -> Result<Response, ApiError> {
    validate::complete_batch(&req)?;
    if let Err(denied) = ensure_node(&state, &caller, &req.node_id).await {
        return Ok(denied);
    }
    let results = state.queue.complete_batch(req).await?;
    Ok(Json(CompleteBatchResponse { results }).into_response())
}

pub(super) async fn agent_renew(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<RenewRequest>,
) -> Result<Response, ApiError> {
    validate::csr("csr_pem", &req.csr_pem)?;
    Ok(Json(state.admin.renew(&caller, req.csr_pem).await?).into_response())
}
