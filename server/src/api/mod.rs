//! The HTTPS API: routes, the access each requires, handlers and their
//! state. Handlers validate input, call [`kobo_queue::queue::Queue`] or
//! [`kobo_queue::admin::Admin`] and map the answer; they never see SQL.
//!
//! | routes | access |
//! |---|---|
//! | `GET /healthz`, `GET /readyz`, `GET /v1/join/ca`, `POST /v1/join`, `POST /v1/enroll` | public (the token or enrollment key authenticates) |
//! | `GET /`, `GET /assets/…`, `GET /login`, `POST /v1/session…` | public (the dashboard's page and login) |
//! | `GET /v1/scaling`, `GET /metrics` | `scaler` (and every role above it; a dashboard session) |
//! | `GET /v1/status`, `GET /v1/events` | `read` (also a dashboard session) |
//! | `GET /v1/jobs…`, `GET /v1/nodes` | `read` |
//! | `POST /v1/jobs`, `/v1/jobs/batch`, `/v1/jobs/{id}/cancel` | `submit` |
//! | `/v1/admin/…` | `admin` |
//! | `/v1/agent/…` | a node certificate, for the node the request names |

mod admin;
mod agent;
pub(crate) mod auth;
mod enroll;
mod error;
pub(crate) mod jobs;
mod observe;
mod scaling;
mod schedules;
mod standby;
mod usage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{MethodRouter, get, patch, post};
use kobo_protocol::AccessRole;

pub use auth::Need;
pub use error::{ApiError, ApiJson, ApiPath, ApiQuery};

use kobo_queue::access::AccessCache;
use kobo_queue::admin::Admin;
use kobo_queue::pki::NodeCert;

use kobo_queue::queue::Queue;

/// Largest request body on any route; the batch route needs the most.
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Longest a client may block in `GET /v1/jobs/{id}/wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// The agent's stream upload: its body arrives at LLM speed, with pauses,
/// so it is the one body exempt from the minimum body rate.
const AGENT_STREAM_PATH: &str = "/v1/agent/jobs/{id}/stream";

/// Whether a request is the agent's stream upload (`POST` on
/// [`AGENT_STREAM_PATH`]), whose body has no rate or deadline.
pub(crate) fn is_stream_upload(method: &axum::http::Method, path: &str) -> bool {
    let template = AGENT_STREAM_PATH.split('/');
    method == axum::http::Method::POST
        && path.split('/').count() == AGENT_STREAM_PATH.split('/').count()
        && path
            .split('/')
            .zip(template)
            .all(|(got, want)| (want == "{id}" && !got.is_empty()) || got == want)
}

/// What the accept loop knows about the connection, put on every request.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// Node id and serial of the verified client certificate, if one was sent.
    pub node_cert: Option<NodeCert>,
    /// The connection's place under the connection bounds; the first
    /// authenticated request takes it out of the unauthenticated ones.
    pub(crate) admission: Arc<crate::limits::Admission>,
}

#[derive(Clone)]
pub struct AppState {
    pub queue: Queue,
    pub admin: Admin,
    pub access: Arc<AccessCache>,
    /// Metrics, status and live updates.
    pub observe: Arc<kobo_queue::observe::Observer>,
    /// Dashboard sessions.
    pub sessions: Arc<crate::session::Sessions>,
    /// How gateway requests become jobs.
    pub gateway: Arc<kobo_queue::config::GatewayConfig>,
    /// Leader or standby: a standby answers every route but health and
    /// readiness with `503 standby` naming the leader (`standby.rs`).
    pub role: tokio::sync::watch::Receiver<kobo_queue::leader::Role>,
}

/// One route: its method, its path as the router matches it, a concrete
/// path to call it with (tests), and the access it needs (`None`: public).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub example: &'static str,
    pub need: Option<Need>,
}

/// Every route with its handler: the one source the router is built from
/// and [`routes`] lists, so the two cannot disagree.
fn declared() -> Vec<(Route, MethodRouter<AppState>)> {
    use axum::routing::delete;
    use kobo_protocol::AccessRole::{Admin, Read, Scaler, Submit};
    let scaler = Some(Need::Role(Scaler));
    let read = Some(Need::Role(Read));
    let submit = Some(Need::Role(Submit));
    let admin = Some(Need::Role(Admin));
    let node = Some(Need::Node);
    let route = |method, path, example, need, handler| {
        (
            Route {
                method,
                path,
                example,
                need,
            },
            handler,
        )
    };
    vec![
        route("GET", "/healthz", "/healthz", None, get(|| async { "ok" })),
        route("GET", "/readyz", "/readyz", None, get(standby::readyz)),
        route(
            "GET",
            "/v1/join/ca",
            "/v1/join/ca",
            None,
            get(admin::join_ca),
        ),
        route("POST", "/v1/join", "/v1/join", None, post(admin::join)),
        route(
            "POST",
            "/v1/enroll",
            "/v1/enroll",
            None,
            post(enroll::enroll),
        ),
        route("GET", "/", "/", None, get(observe::dashboard_index)),
        route(
            "GET",
            "/assets/{file}",
            "/assets/app.js",
            None,
            get(observe::dashboard_asset),
        ),
        route(
            "GET",
            "/login",
            "/login?token=00",
            None,
            get(observe::login_url),
        ),
        route(
            "POST",
            "/v1/session",
            "/v1/session",
            None,
            post(observe::session_create),
        ),
        route(
            "POST",
            "/v1/session/logout",
            "/v1/session/logout",
            None,
            post(observe::session_logout),
        ),
        route(
            "GET",
            "/metrics",
            "/metrics",
            scaler,
            get(observe::metrics_get),
        ),
        route(
            "GET",
            "/v1/scaling",
            "/v1/scaling?kind=general_query",
            scaler,
            get(scaling::scaling_get),
        ),
        route(
            "GET",
            "/v1/status",
            "/v1/status",
            read,
            get(observe::status_get),
        ),
        route(
            "GET",
            "/v1/usage",
            "/v1/usage?group=key,model",
            read,
            get(usage::usage_get),
        ),
        route(
            "GET",
            "/v1/events",
            "/v1/events?once=true",
            read,
            get(observe::events_stream),
        ),
        route(
            "GET",
            "/v1/schedules",
            "/v1/schedules",
            read,
            get(schedules::schedules_list),
        ),
        route(
            "POST",
            "/v1/schedules",
            "/v1/schedules",
            submit,
            post(schedules::schedules_create),
        ),
        route(
            "DELETE",
            "/v1/schedules/{name}",
            "/v1/schedules/nope",
            submit,
            delete(schedules::schedules_delete),
        ),
        route(
            "POST",
            "/v1/schedules/{name}/pause",
            "/v1/schedules/nope/pause",
            submit,
            post(schedules::schedules_pause),
        ),
        route(
            "POST",
            "/v1/schedules/{name}/resume",
            "/v1/schedules/nope/resume",
            submit,
            post(schedules::schedules_resume),
        ),
        route(
            "POST",
            "/v1/admin/nodes/{id}/drain",
            "/v1/admin/nodes/x/drain",
            admin,
            post(schedules::nodes_drain),
        ),
        route(
            "POST",
            "/v1/admin/nodes/{id}/resume",
            "/v1/admin/nodes/x/resume",
            admin,
            post(schedules::nodes_resume),
        ),
        route("GET", "/v1/jobs", "/v1/jobs", read, get(jobs::jobs_list)),
        route(
            "GET",
            "/v1/jobs/{id}",
            "/v1/jobs/1",
            read,
            get(jobs::jobs_get),
        ),
        route(
            "GET",
            "/v1/jobs/{id}/wait",
            "/v1/jobs/1/wait?timeout_ms=1",
            read,
            get(jobs::jobs_wait),
        ),
        route("GET", "/v1/nodes", "/v1/nodes", read, get(jobs::nodes_list)),
        route(
            "POST",
            "/v1/jobs",
            "/v1/jobs",
            submit,
            post(jobs::jobs_create),
        ),
        route(
            "POST",
            "/v1/jobs/batch",
            "/v1/jobs/batch",
            submit,
            post(jobs::jobs_create_batch),
        ),
        route(
            "POST",
            "/v1/jobs/{id}/cancel",
            "/v1/jobs/1/cancel",
            submit,
            post(jobs::jobs_cancel),
        ),
        route(
            "POST",
            "/v1/admin/apikeys",
            "/v1/admin/apikeys",
            admin,
            post(admin::apikeys_create),
        ),
        route(
            "GET",
            "/v1/admin/apikeys",
            "/v1/admin/apikeys",
            admin,
            get(admin::apikeys_list),
        ),
        route(
            "PATCH",
            "/v1/admin/apikeys/{id}",
            "/v1/admin/apikeys/0000000000000000",
            admin,
            patch(admin::apikeys_update),
        ),
        route(
            "POST",
            "/v1/admin/apikeys/{id}/revoke",
            "/v1/admin/apikeys/0000000000000000/revoke",
            admin,
            post(admin::apikeys_revoke),
        ),
        route(
            "POST",
            "/v1/admin/tokens",
            "/v1/admin/tokens",
            admin,
            post(admin::tokens_create),
        ),
        route(
            "POST",
            "/v1/admin/enroll-keys",
            "/v1/admin/enroll-keys",
            admin,
            post(enroll::keys_create),
        ),
        route(
            "GET",
            "/v1/admin/enroll-keys",
            "/v1/admin/enroll-keys",
            admin,
            get(enroll::keys_list),
        ),
        route(
            "POST",
            "/v1/admin/enroll-keys/{id}/revoke",
            "/v1/admin/enroll-keys/0000000000000000/revoke",
            admin,
            post(enroll::keys_revoke),
        ),
        route(
            "POST",
            "/v1/admin/nodes/{id}/revoke",
            "/v1/admin/nodes/x/revoke",
            admin,
            post(admin::nodes_revoke),
        ),
        route(
            "GET",
            "/v1/admin/audit",
            "/v1/admin/audit",
            admin,
            get(admin::audit_list),
        ),
        route(
            "GET",
            "/v1/admin/audit/verify",
            "/v1/admin/audit/verify",
            admin,
            get(admin::audit_verify),
        ),
        route(
            "POST",
            "/v1/admin/certificates",
            "/v1/admin/certificates",
            admin,
            post(admin::certificates_create),
        ),
        route(
            "POST",
            "/v1/admin/provision-runs",
            "/v1/admin/provision-runs",
            admin,
            post(admin::provision_runs_create),
        ),
        route(
            "POST",
            "/v1/agent/register",
            "/v1/agent/register",
            node,
            post(agent::agent_register),
        ),
        route(
            "POST",
            "/v1/agent/lease",
            "/v1/agent/lease",
            node,
            post(agent::agent_lease),
        ),
        route(
            "POST",
            "/v1/agent/heartbeat",
            "/v1/agent/heartbeat",
            node,
            post(agent::agent_heartbeat),
        ),
        route(
            "POST",
            "/v1/agent/jobs/{id}/complete",
            "/v1/agent/jobs/1/complete",
            node,
            post(agent::agent_complete),
        ),
        route(
            "POST",
            "/v1/agent/complete",
            "/v1/agent/complete",
            node,
            post(agent::agent_complete_batch),
        ),
        route(
            "POST",
            "/v1/agent/renew",
            "/v1/agent/renew",
            node,
            post(agent::agent_renew),
        ),
        route(
            "POST",
            AGENT_STREAM_PATH,
            "/v1/agent/jobs/1/stream?node_id=&lease_token=1",
            node,
            post(crate::gateway::upload::agent_stream),
        ),
        // The gateway: OpenAI's and Ollama's APIs.
        route(
            "POST",
            "/v1/chat/completions",
            "/v1/chat/completions",
            submit,
            post(crate::gateway::openai_chat),
        ),
        route(
            "POST",
            "/v1/completions",
            "/v1/completions",
            submit,
            post(crate::gateway::openai_completions),
        ),
        route(
            "POST",
            "/v1/embeddings",
            "/v1/embeddings",
            submit,
            post(crate::gateway::openai_embeddings),
        ),
        route(
            "GET",
            "/v1/models",
            "/v1/models",
            read,
            get(crate::gateway::models::openai_models),
        ),
        route(
            "GET",
            "/v1/models/{id}",
            "/v1/models/nope",
            read,
            get(crate::gateway::models::openai_model_get),
        ),
        route(
            "POST",
            "/api/chat",
            "/api/chat",
            submit,
            post(crate::gateway::ollama_chat),
        ),
        route(
            "POST",
            "/api/generate",
            "/api/generate",
            submit,
            post(crate::gateway::ollama_generate),
        ),
        route(
            "POST",
            "/api/embed",
            "/api/embed",
            submit,
            post(crate::gateway::ollama_embed),
        ),
        route(
            "POST",
            "/api/embeddings",
            "/api/embeddings",
            submit,
            post(crate::gateway::ollama_embeddings),
        ),
        route(
            "GET",
            "/api/tags",
            "/api/tags",
            read,
            get(crate::gateway::models::ollama_tags),
        ),
        route(
            "GET",
            "/api/ps",
            "/api/ps",
            read,
            get(crate::gateway::models::ollama_ps),
        ),
        route(
            "POST",
            "/api/show",
            "/api/show",
            read,
            post(crate::gateway::models::ollama_show),
        ),
        route(
            "GET",
            "/api/version",
            "/api/version",
            read,
            get(crate::gateway::models::ollama_version),
        ),
    ]
}

/// Every route and the access it needs: the role-matrix test walks this.
pub fn routes() -> Vec<Route> {
    declared().into_iter().map(|(route, _)| route).collect()
}

pub fn router(state: AppState) -> Router {
    let mut groups: Vec<(Option<Need>, Router<AppState>)> = Vec::new();
    for (route, handler) in declared() {
        let at = match groups.iter().position(|(need, _)| *need == route.need) {
            Some(at) => at,
            None => {
                groups.push((route.need, Router::new()));
                groups.len() - 1
            }
        };
        let group = std::mem::take(&mut groups[at].1);
        groups[at].1 = group.route(route.path, handler);
    }
    let mut app = Router::new();
    for (need, group) in groups {
        let group = match need {
            None => group,
            Some(Need::Role(AccessRole::Scaler)) => {
                group.route_layer(from_fn_with_state(state.clone(), auth::need_scaler))
            }
            Some(Need::Role(AccessRole::Read)) => {
                group.route_layer(from_fn_with_state(state.clone(), auth::need_read))
            }
            Some(Need::Role(AccessRole::Submit)) => {
                group.route_layer(from_fn_with_state(state.clone(), auth::need_submit))
            }
            Some(Need::Role(AccessRole::Admin)) => {
                group.route_layer(from_fn_with_state(state.clone(), auth::need_admin))
            }
            Some(Need::Node) => {
                group.route_layer(from_fn_with_state(state.clone(), auth::need_node))
            }
        };
        app = app.merge(group);
    }
    app.fallback(|| async { ApiError::not_found("no such route") })
        .layer(from_fn_with_state(state.clone(), auth::authenticate))
        .layer(from_fn_with_state(state.clone(), standby::only_on_leader))
        .layer(axum::middleware::from_fn(
            crate::gateway::errors::api_shaped,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stream_upload_is_a_stream_upload() {
        use axum::http::Method;
        assert!(is_stream_upload(&Method::POST, "/v1/agent/jobs/42/stream"));
        for (method, path) in [
            (Method::GET, "/v1/agent/jobs/42/stream"),
            (Method::POST, "/v1/agent/jobs//stream"),
            (Method::POST, "/v1/agent/jobs/42/complete"),
            (Method::POST, "/v1/agent/jobs/42/stream/x"),
            (Method::POST, "/v1/join"),
        ] {
            assert!(!is_stream_upload(&method, path), "{method} {path}");
        }
    }

    /// Each example path is one the router matches with the declared
    /// template (so the role-matrix test calls the route it means).
    #[test]
    fn every_example_matches_its_route_template() {
        for route in routes() {
            let example = route.example.split('?').next().unwrap_or_default();
            let (want, got): (Vec<_>, Vec<_>) = (
                route.path.split('/').collect(),
                example.split('/').collect(),
            );
            assert_eq!(want.len(), got.len(), "{} vs {}", route.path, route.example);
            for (w, g) in want.iter().zip(&got) {
                assert!(
                    (w.starts_with('{') && !g.is_empty()) || w == g,
                    "{} does not match {}",
                    route.example,
                    route.path
                );
            }
        }
    }

    #[test]
    fn no_route_is_declared_twice() {
        let all = routes();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {} twice",
                    a.method,
                    a.path
                );
            }
        }
    }
}
