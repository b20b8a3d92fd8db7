//! The HTTPS API: routes, the access each requires, handlers and their
//! state. Handlers validate input, call [`crate::queue::Queue`] or
//! [`crate::admin::Admin`] and map the answer; they never see SQL.
//!
//! | routes | access |
//! |---|---|
//! | `GET /healthz`, `GET /v1/join/ca`, `POST /v1/join` | public (join: the token authenticates) |
//! | `GET /`, `GET /assets/…`, `GET /login`, `POST /v1/session…` | public (the dashboard's page and login) |
//! | `GET /metrics`, `GET /v1/status`, `GET /v1/events` | `read` (also a dashboard session) |
//! | `GET /v1/jobs…`, `GET /v1/nodes` | `read` |
//! | `POST /v1/jobs`, `/v1/jobs/batch`, `/v1/jobs/{id}/cancel` | `submit` |
//! | `/v1/admin/…` | `admin` |
//! | `/v1/agent/…` | a node certificate, for the node the request names |

mod admin;
mod agent;
mod auth;
mod error;
mod jobs;
mod observe;
mod schedules;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};

pub use auth::Need;
pub use error::{ApiError, ApiJson, ApiPath, ApiQuery};
pub use jobs::queue_reason;

use crate::access::AccessCache;
use crate::admin::Admin;
use crate::queue::Queue;
use crate::tls::NodeCert;

/// Largest request body on any route; the batch route needs the most.
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Longest a client may block in `GET /v1/jobs/{id}/wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// A request body must arrive within this long (slow-body clients are cut).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the accept loop knows about the connection, put on every request.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// Node id and serial of the verified client certificate, if one was sent.
    pub node_cert: Option<NodeCert>,
}

#[derive(Clone)]
pub struct AppState {
    pub queue: Queue,
    pub admin: Admin,
    pub access: Arc<AccessCache>,
    /// Metrics, status, live updates and dashboard sessions.
    pub observe: Arc<crate::observe::Observer>,
}

pub fn router(state: AppState) -> Router {
    let public = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/join/ca", get(admin::join_ca))
        .route("/v1/join", post(admin::join))
        .route("/", get(observe::dashboard_index))
        .route("/assets/{file}", get(observe::dashboard_asset))
        .route("/login", get(observe::login_url))
        .route("/v1/session", post(observe::session_create))
        .route("/v1/session/logout", post(observe::session_logout));
    let read = Router::new()
        .route("/v1/jobs", get(jobs::jobs_list))
        .route("/v1/jobs/{id}", get(jobs::jobs_get))
        .route("/v1/jobs/{id}/wait", get(jobs::jobs_wait))
        .route("/v1/nodes", get(jobs::nodes_list))
        .route("/metrics", get(observe::metrics_get))
        .route("/v1/status", get(observe::status_get))
        .route("/v1/events", get(observe::events_stream))
        .route("/v1/schedules", get(schedules::schedules_list))
        .route_layer(from_fn_with_state(state.clone(), auth::need_read));
    let submit = Router::new()
        .route("/v1/jobs", post(jobs::jobs_create))
        .route("/v1/jobs/batch", post(jobs::jobs_create_batch))
        .route("/v1/jobs/{id}/cancel", post(jobs::jobs_cancel))
        .route("/v1/schedules", post(schedules::schedules_create))
        .route(
            "/v1/schedules/{name}",
            axum::routing::delete(schedules::schedules_delete),
        )
        .route(
            "/v1/schedules/{name}/pause",
            post(schedules::schedules_pause),
        )
        .route(
            "/v1/schedules/{name}/resume",
            post(schedules::schedules_resume),
        )
        .route_layer(from_fn_with_state(state.clone(), auth::need_submit));
    let admin = Router::new()
        .route(
            "/v1/admin/apikeys",
            post(admin::apikeys_create).get(admin::apikeys_list),
        )
        .route("/v1/admin/apikeys/{id}/revoke", post(admin::apikeys_revoke))
        .route("/v1/admin/tokens", post(admin::tokens_create))
        .route("/v1/admin/nodes/{id}/revoke", post(admin::nodes_revoke))
        .route("/v1/admin/nodes/{id}/drain", post(schedules::nodes_drain))
        .route("/v1/admin/nodes/{id}/resume", post(schedules::nodes_resume))
        .route("/v1/admin/audit", get(admin::audit_list))
        .route("/v1/admin/audit/verify", get(admin::audit_verify))
        .route("/v1/admin/certificates", post(admin::certificates_create))
        .route(
            "/v1/admin/provision-runs",
            post(admin::provision_runs_create),
        )
        .route_layer(from_fn_with_state(state.clone(), auth::need_admin));
    let agent = Router::new()
        .route("/v1/agent/register", post(agent::agent_register))
        .route("/v1/agent/lease", post(agent::agent_lease))
        .route("/v1/agent/heartbeat", post(agent::agent_heartbeat))
        .route("/v1/agent/jobs/{id}/complete", post(agent::agent_complete))
        .route("/v1/agent/complete", post(agent::agent_complete_batch))
        .route("/v1/agent/renew", post(agent::agent_renew))
        .route_layer(from_fn_with_state(state.clone(), auth::need_node));
    Router::new()
        .merge(public)
        .merge(read)
        .merge(submit)
        .merge(admin)
        .merge(agent)
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(from_fn_with_state(state.clone(), auth::authenticate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Every route and the access it needs: the role-matrix test walks this.
pub const ROUTES: &[(&str, &str, Option<Need>)] = &[
    ("GET", "/healthz", None),
    ("GET", "/v1/join/ca", None),
    ("POST", "/v1/join", None),
    ("GET", "/", None),
    ("GET", "/assets/app.js", None),
    ("GET", "/login?token=00", None),
    ("POST", "/v1/session", None),
    ("POST", "/v1/session/logout", None),
    (
        "GET",
        "/metrics",
        Some(Need::Role(kobo_protocol::AccessRole::Read)),
    ),
    (
        "GET",
        "/v1/status",
        Some(Need::Role(kobo_protocol::AccessRole::Read)),
    ),
    (
        "GET",
        "/v1/events?once=true",
        Some(Need::Role(kobo_protocol::AccessRole::Read)),
    ),
    (
        "GET",
        "/v1/schedules",
        Some(Need::Role(kobo_protocol::AccessRole::Read)),
    ),
    (
        "POST",
        "/v1/schedules",
        Some(Need::Role(kobo_protocol::AccessRole::Submit)),
    ),
    (
        "DELETE",
        "/v1/schedules/nope",
        Some(Need::Role(kobo_protocol::AccessRole::Submit)),
    ),
    (
        "POST",
        "/v1/schedules/nope/pause",
        Some(Need::Role(kobo_protocol::AccessRole::Submit)),
    ),
    (
        "POST",
        "/v1/schedules/nope/resume",
        Some(Need::Role(kobo_protocol::AccessRole::Submit)),
    ),
    (
        "POST",
        "/v1/admin/nodes/x/drain",
        Some(Need::Role(kobo_protocol::AccessRole::Admin)),
    ),
    (
        "POST",
        "/v1/admin/nodes/x/resume",
        Some(Need::Role(kobo_protocol::AccessRole::Admin)),
    ),
    (
        "GET",
        "/v1/jobs",
        Some(Need::Role(kobo_protocol::AccessRole::Read)),
    ),
    (
        "GET",
        "/v1/jobs/1",
        Some(Need::Role(kobo_protocol::AccessRole::Read)),
    ),
    (
        "GET",
        "/v1/jobs/1/wait?timeout_ms=1",
        Some(Need::Role(kobo_protocol::AccessRole::Read)),
    ),
    (
        "GET",
        "/v1/nodes",
        Some(Need::Role(kobo_protocol::AccessRole::Read)),
    ),
    (
        "POST",
        "/v1/jobs",
        Some(Need::Role(kobo_protocol::AccessRole::Submit)),
    ),
    (
        "POST",
        "/v1/jobs/batch",
        Some(Need::Role(kobo_protocol::AccessRole::Submit)),
    ),
    (
        "POST",
        "/v1/jobs/1/cancel",
        Some(Need::Role(kobo_protocol::AccessRole::Submit)),
    ),
    (
        "POST",
        "/v1/admin/apikeys",
        Some(Need::Role(kobo_protocol::AccessRole::Admin)),
    ),
    (
        "GET",
        "/v1/admin/apikeys",
        Some(Need::Role(kobo_protocol::AccessRole::Admin)),
    ),
    (
        "POST",
        "/v1/admin/apikeys/0000000000000000/revoke",
        Some(Need::Role(kobo_protocol::AccessRole::Admin)),
    ),
    (
        "POST",
        "/v1/admin/tokens",
        Some(Need::Role(kobo_protocol::AccessRole::Admin)),
    ),
    (
        "POST",
        "/v1/admin/nodes/x/revoke",
        Some(Need::Role(kobo_protocol::AccessRole::Admin)),
    ),
    (
        "GET",
        "/v1/admin/audit",
        Some(Need::Role(kobo_protocol::AccessRole::Admin)),
    ),
    (
        "GET",
        "/v1/admin/audit/verify",
        Some(Need::Role(kobo_protocol::AccessRole::Admin)),
    ),
    (
        "POST",
        "/v1/admin/certificates",
        Some(Need::Role(kobo_protocol::AccessRole::Admin)),
    ),
    (
        "POST",
        "/v1/admin/provision-runs",
        Some(Need::Role(kobo_protocol::AccessRole::Admin)),
    ),
    ("POST", "/v1/agent/register", Some(Need::Node)),
    ("POST", "/v1/agent/lease", Some(Need::Node)),
    ("POST", "/v1/agent/heartbeat", Some(Need::Node)),
    ("POST", "/v1/agent/jobs/1/complete", Some(Need::Node)),
    ("POST", "/v1/agent/complete", Some(Need::Node)),
    ("POST", "/v1/agent/renew", Some(Need::Node)),
];
