//! Enrollment keys: the admin routes that create, list and revoke them, and
//! the public `POST /v1/enroll` where a node enrolls with one.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use kobo_protocol::{
    EnrollKeyCreate, EnrollKeyCreated, EnrollKeyView, EnrollRequest, JoinResponse, validate,
};
use kobo_queue::access::Caller;
use kobo_queue::enrollment::MAX_ENROLL_KEY_TTL_MS;

use super::{ApiError, ApiJson, ApiPath, AppState};

pub(super) async fn enroll(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<Json<JoinResponse>, ApiError> {
    validate::csr("csr_pem", &req.csr_pem)?;
    if req.key.len() > 512 {
        return Err(ApiError::invalid_field("key", "key: too long"));
    }
    match (&req.name_suffix, &req.node_id) {
        (Some(suffix), None) => validate::dns_label("name_suffix", suffix, true)?,
        (None, Some(node_id)) => validate::dns_label("node_id", node_id, false)?,
        _ => {
            return Err(ApiError::invalid_field(
                "name_suffix",
                "name_suffix: give exactly one of name_suffix and node_id",
            ));
        }
    }
    Ok(Json(state.admin.enroll(&caller, req).await?))
}

pub(super) async fn keys_create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<EnrollKeyCreate>,
) -> Result<(StatusCode, Json<EnrollKeyCreated>), ApiError> {
    validate::dns_label("prefix", &req.prefix, true)?;
    if req.prefix.starts_with('-') {
        return Err(ApiError::invalid_field(
            "prefix",
            "prefix: must start with a letter or digit (a DNS label)",
        ));
    }
    if let Some(ttl) = req.ttl_ms
        && !(1..=MAX_ENROLL_KEY_TTL_MS).contains(&ttl)
    {
        return Err(ApiError::invalid_field(
            "ttl_ms",
            format!("ttl_ms: must be between 1 and {MAX_ENROLL_KEY_TTL_MS}"),
        ));
    }
    if req.max_enrollments == Some(0) {
        return Err(ApiError::invalid_field(
            "max_enrollments",
            "max_enrollments: must be at least 1",
        ));
    }
    let created = state
        .admin
        .create_enroll_key(&caller, req.prefix, req.ttl_ms, req.max_enrollments)
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(super) async fn keys_list(
    State(state): State<AppState>,
) -> Result<Json<Vec<EnrollKeyView>>, ApiError> {
    Ok(Json(state.admin.list_enroll_keys().await?))
}

pub(super) async fn keys_revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    validate::name("id", &id)?;
    state.admin.revoke_enroll_key(&caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
