//! Admin routes (keys, tokens, revocation, audit, certificates and runs for
//! provisioning) and the public join routes.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use kobo_protocol::{
    ApiKeyCreate, ApiKeyCreated, ApiKeyView, AuditList, AuditQuery, AuditVerify, CertificateIssue,
    CertificateIssued, JoinRequest, JoinResponse, KeyPolicyUpdate, PROVISION_ACTIONS,
    PROVISION_OUTCOMES, ProvisionRecorded, ProvisionRun, RevokeResponse, TokenCreate, TokenCreated,
};

use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState};
use kobo_protocol::validate;
use kobo_queue::access::Caller;
use kobo_queue::admin::MAX_TOKEN_TTL_MS;

/// Most audit rows one listing returns.
const MAX_AUDIT_LIST: u32 = 10_000;
/// Longest detail of a provisioning run kept in the audit log.
const MAX_PROVISION_DETAIL: usize = 2000;

pub(super) async fn join_ca(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.admin.ca_pem().to_owned(),
    )
}

pub(super) async fn join(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<JoinRequest>,
) -> Result<Json<JoinResponse>, ApiError> {
    validate::csr("csr_pem", &req.csr_pem)?;
    if req.token.len() > 512 {
        return Err(ApiError::invalid_field("token", "token: too long"));
    }
    Ok(Json(
        state.admin.join(&caller, &req.token, req.csr_pem).await?,
    ))
}

pub(super) async fn apikeys_create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ApiKeyCreate>,
) -> Result<(StatusCode, Json<ApiKeyCreated>), ApiError> {
    validate::name("name", &req.name)?;
    let created = state
        .admin
        .create_api_key(&caller, req.name, req.role, req.policy)
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(super) async fn apikeys_list(
    State(state): State<AppState>,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    Ok(Json(state.admin.list_api_keys().await?))
}

pub(super) async fn apikeys_update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<KeyPolicyUpdate>,
) -> Result<Json<ApiKeyView>, ApiError> {
    validate::name("id", &id)?;
    Ok(Json(state.admin.update_api_key(&caller, id, req).await?))
}

pub(super) async fn apikeys_revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    validate::name("id", &id)?;
    state.admin.revoke_api_key(&caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn tokens_create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<TokenCreate>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    validate::name("node_id", &req.node_id)?;
    if !(1..=MAX_TOKEN_TTL_MS).contains(&req.ttl_ms) {
        return Err(ApiError::invalid_field(
            "ttl_ms",
            format!("ttl_ms: must be between 1 and {MAX_TOKEN_TTL_MS}"),
        ));
    }
    let created = state
        .admin
        .create_token(&caller, req.node_id, req.ttl_ms)
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(super) async fn nodes_revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RevokeResponse>, ApiError> {
    validate::name("id", &id)?;
    Ok(Json(state.admin.revoke_node(&caller, id).await?))
}

pub(super) async fn audit_list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = query.limit.unwrap_or(1000).min(MAX_AUDIT_LIST);
    let entries = state
        .admin
        .audit_list(query.since.unwrap_or(0), limit)
        .await?;
    Ok(Json(AuditList { entries }))
}

pub(super) async fn audit_verify(
    State(state): State<AppState>,
) -> Result<Json<AuditVerify>, ApiError> {
    Ok(Json(state.admin.audit_verify().await?))
}

/// `POST /v1/admin/certificates`: sign a CSR made on a node (provisioning).
pub(super) async fn certificates_create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CertificateIssue>,
) -> Result<(StatusCode, Json<CertificateIssued>), ApiError> {
    validate::name("node_id", &req.node_id)?;
    validate::csr("csr_pem", &req.csr_pem)?;
    let issued = state
        .admin
        .issue_certificate(&caller, req.node_id, req.csr_pem)
        .await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// `POST /v1/admin/provision-runs`: one host's outcome, as an audit row.
pub(super) async fn provision_runs_create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ProvisionRun>,
) -> Result<(StatusCode, Json<ProvisionRecorded>), ApiError> {
    validate::name("host", &req.host)?;
    validate::name("node_id", &req.node_id)?;
    if !PROVISION_ACTIONS.contains(&req.action.as_str()) {
        return Err(ApiError::invalid_field(
            "action",
            format!("action: one of {}", PROVISION_ACTIONS.join(", ")),
        ));
    }
    if !PROVISION_OUTCOMES.contains(&req.outcome.as_str()) {
        return Err(ApiError::invalid_field(
            "outcome",
            format!("outcome: one of {}", PROVISION_OUTCOMES.join(", ")),
        ));
    }
    if req.detail.len() > MAX_PROVISION_DETAIL || req.detail.contains('\0') {
        return Err(ApiError::invalid_field(
            "detail",
            format!("detail: at most {MAX_PROVISION_DETAIL} bytes, no NUL"),
        ));
    }
    let recorded = state.admin.record_provision_run(&caller, req).await?;
    Ok((StatusCode::CREATED, Json(recorded)))
}
