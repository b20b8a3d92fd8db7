//! Authentication and authorisation of every request: who is calling (API
//! key, node certificate, nobody), and whether the route's required access
//! is met. Refusals are answered 401 (no or bad credentials) or 403 (known
//! caller, not allowed) and written to the audit log.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kobo_protocol::AccessRole;

use super::{ApiError, AppState, PeerInfo};
use kobo_queue::access::{Caller, Principal, Refusal};
use kobo_queue::admin;

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// An API key with at least this role.
    Role(AccessRole),
    /// A node certificate.
    Node,
}

pub(super) async fn deny(
    state: &AppState,
    caller: &Caller,
    status: StatusCode,
    action: &str,
    why: String,
) -> Response {
    let entry = admin::record(caller, action, None, "denied", Some(why.clone()));
    if let Err(err) = state.admin.audit(entry).await {
        tracing::error!(error = %err, "could not write the audit row of a refusal");
    }
    let code = if status == StatusCode::UNAUTHORIZED {
        "unauthorized"
    } else {
        "forbidden"
    };
    ApiError::new(status, code, why).into_response()
}

/// Resolves the caller and puts a [`Caller`] on the request; refuses bad
/// credentials outright. Every response gets an `x-request-id`.
pub(super) async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request.extensions().get::<PeerInfo>().cloned();
    let request_id = format!("{:016x}", rand::random::<u64>());
    let mut caller = Caller {
        principal: Principal::Anonymous,
        source: peer.as_ref().map(|p| p.addr.to_string()),
        request_id: Some(request_id.clone()),
    };
    let presented = request.headers().get(header::AUTHORIZATION).cloned();
    let resolved = match (presented, peer.as_ref().and_then(|p| p.node_cert.clone())) {
        (Some(value), _) => match value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
            Some(key) => state.access.api_key(key.trim()),
            None => Err(Refusal::BadKey(
                "the Authorization header must be `Bearer <API key>`".into(),
            )),
        },
        (None, Some(cert)) => state.access.node(&cert),
        // A dashboard session cookie, or nobody.
        (None, None) => Ok(super::observe::session_principal(&state, request.headers())),
    };
    let mut response = match resolved {
        Ok(principal) => {
            if !matches!(principal, Principal::Anonymous)
                && let Some(peer) = &peer
            {
                peer.admission.authenticated();
            }
            caller.principal = principal;
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(Refusal::BadKey(why)) => {
            deny(
                &state,
                &caller,
                StatusCode::UNAUTHORIZED,
                "auth.apikey",
                why,
            )
            .await
        }
        Err(Refusal::BadCertificate(why)) => {
            deny(
                &state,
                &caller,
                StatusCode::FORBIDDEN,
                "auth.certificate",
                why,
            )
            .await
        }
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn require(need: Need, state: AppState, request: Request, next: Next) -> Response {
    let Some(caller) = request.extensions().get::<Caller>().cloned() else {
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no caller")
            .into_response();
    };
    let allowed = match (need, &caller.principal) {
        (_, Principal::Anonymous) => {
            let what = match need {
                Need::Node => "this route needs a node certificate",
                Need::Role(_) => "this route needs an API key (Authorization: Bearer kobo_...)",
            };
            let action = format!("auth.{}", request.uri().path());
            return deny(
                &state,
                &caller,
                StatusCode::UNAUTHORIZED,
                &action,
                what.into(),
            )
            .await;
        }
        (Need::Node, principal) => matches!(principal, Principal::Node { .. }),
        (Need::Role(role), principal) => principal.role().is_some_and(|have| have >= role),
    };
    if !allowed {
        let why = match need {
            Need::Node => format!("{} may not call agent routes", caller.actor()),
            Need::Role(role) => format!("{} lacks the {role} role", caller.actor()),
        };
        let action = format!("auth.{}", request.uri().path());
        return deny(&state, &caller, StatusCode::FORBIDDEN, &action, why).await;
    }
    next.run(request).await
}

pub(super) async fn need_scaler(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    require(Need::Role(AccessRole::Scaler), state, request, next).await
}

pub(super) async fn need_read(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    require(Need::Role(AccessRole::Read), state, request, next).await
}

pub(super) async fn need_submit(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    require(Need::Role(AccessRole::Submit), state, request, next).await
}

pub(super) async fn need_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    require(Need::Role(AccessRole::Admin), state, request, next).await
}

pub(super) async fn need_node(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    require(Need::Node, state, request, next).await
}

/// The node a node certificate speaks for; a request naming another node
/// is refused (403) and audited.
pub(crate) async fn ensure_node(
    state: &AppState,
    caller: &Caller,
    named: &str,
) -> Result<(), Response> {
    match &caller.principal {
        Principal::Node { node_id, .. } if node_id == named => Ok(()),
        _ => Err(deny(
            state,
            caller,
            StatusCode::FORBIDDEN,
            "auth.node_mismatch",
            format!("{} may not speak for node {named}", caller.actor()),
        )
        .await),
    }
}
