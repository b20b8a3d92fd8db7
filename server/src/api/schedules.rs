//! Schedules (recurring jobs) and node drain/resume routes.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use kobo_protocol::{NodeStatus, ScheduleCreate, ScheduleView};

use super::{ApiError, ApiJson, ApiPath, AppState};
use kobo_protocol::validate;
use kobo_queue::access::Caller;

pub(super) async fn schedules_create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ScheduleCreate>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    validate::name("name", &req.name)?;
    validate::submit(&req.job, "job.")?;
    if req.job.idempotency_key.is_some() {
        return Err(ApiError::invalid_field(
            "job.idempotency_key",
            "job.idempotency_key: each firing gets its own key (schedule:<name>:<slot>)",
        ));
    }
    if let Err(why) = kobo_queue::store::parse_cron(&req.cron) {
        return Err(ApiError::invalid_field("cron", format!("cron: {why}")));
    }
    let view = state
        .queue
        .create_schedule(&caller, req.name, req.cron, req.job, req.catch_up)
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

pub(super) async fn schedules_list(
    State(state): State<AppState>,
) -> Result<Json<Vec<ScheduleView>>, ApiError> {
    Ok(Json(state.queue.list_schedules().await?))
}

pub(super) async fn schedules_pause(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    validate::name("name", &name)?;
    state.queue.pause_schedule(&caller, name, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn schedules_resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    validate::name("name", &name)?;
    state.queue.pause_schedule(&caller, name, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn schedules_delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    validate::name("name", &name)?;
    state.queue.delete_schedule(&caller, name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Serialize)]
pub(super) struct NodeStatusAnswer {
    node_id: String,
    status: NodeStatus,
}

pub(super) async fn nodes_drain(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<NodeStatusAnswer>, ApiError> {
    validate::name("id", &id)?;
    let status = state.queue.drain(&caller, id.clone()).await?;
    Ok(Json(NodeStatusAnswer {
        node_id: id,
        status,
    }))
}

pub(super) async fn nodes_resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<NodeStatusAnswer>, ApiError> {
    validate::name("id", &id)?;
    let status = state.queue.resume(&caller, id.clone()).await?;
    Ok(Json(NodeStatusAnswer {
        node_id: id,
        status,
    }))
}
