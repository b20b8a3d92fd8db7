//! A standby coordinator's answers: while this coordinator is not the
//! leader, every route but `GET /healthz` and `GET /readyz` answers
//! `503 standby` naming the leader (header [`LEADER_HEADER`] and the error
//! message), so agents and clients move there; `GET /readyz` tells a load
//! balancer which coordinator leads.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kobo_protocol::{LEADER_HEADER, ROLE_HEADER, Readiness, STANDBY_CODE};
use kobo_queue::leader::Role;

use super::{ApiError, AppState};

/// Seconds a client waits before retrying a standby that knows no leader
/// (a takeover is under way: the next leader is seconds away).
const STANDBY_RETRY_AFTER_SECS: u64 = 1;

/// Routes a standby still answers itself: liveness and readiness.
const ANSWERED_BY_STANDBY: &[&str] = &["/healthz", "/readyz"];

/// Middleware: passes requests through on the leader, refuses them on a standby.
pub(crate) async fn only_on_leader(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let role = state.role.borrow().clone();
    match role {
        Role::Leader { .. } => next.run(request).await,
        Role::Standby { .. } if ANSWERED_BY_STANDBY.contains(&request.uri().path()) => {
            next.run(request).await
        }
        Role::Standby { leader_address } => refusal(leader_address.as_deref()),
    }
}

/// `503 standby` naming the leader when it is known.
fn refusal(leader: Option<&str>) -> Response {
    let message = match leader {
        Some(url) => format!("standby: the leader is at {url}"),
        None => "standby: no leader is known yet (a takeover is under way); retry shortly".into(),
    };
    let mut response = ApiError {
        retry_after: Some(STANDBY_RETRY_AFTER_SECS),
        ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, STANDBY_CODE, message)
    }
    .into_response();
    response
        .headers_mut()
        .insert(ROLE_HEADER, HeaderValue::from_static("standby"));
    if let Some(value) = leader.and_then(|url| HeaderValue::from_str(url).ok()) {
        response.headers_mut().insert(LEADER_HEADER, value);
    }
    response
}

/// `GET /readyz`: 200 on the leader, 503 (with the leader's header) on a standby.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let role = state.role.borrow().clone();
    match role {
        Role::Leader { epoch } => Json(Readiness {
            role: "leader".into(),
            epoch: Some(epoch),
            leader: None,
        })
        .into_response(),
        Role::Standby { leader_address } => {
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Readiness {
                    role: "standby".into(),
                    epoch: None,
                    leader: leader_address.clone(),
                }),
            )
                .into_response();
            if let Some(value) = leader_address.and_then(|url| HeaderValue::from_str(&url).ok()) {
                response.headers_mut().insert(LEADER_HEADER, value);
            }
            response
        }
    }
}
