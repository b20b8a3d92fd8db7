//! Observability routes: `GET /metrics` (Prometheus), `GET /v1/status`,
//! `GET /v1/events` (Server-Sent Events for the dashboard), the dashboard's
//! page and files, and its login: `POST /v1/session` (API key → session
//! cookie), `GET /login?token=` (the one-time URL `serve` prints) and
//! `POST /v1/session/logout`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use kobo_protocol::{AccessRole, ClusterStatus, SessionCreate, SessionCreated};
use tokio::sync::broadcast::error::RecvError;

use super::auth::deny;
use super::{ApiError, ApiJson, AppState};
use crate::dashboard;
use crate::session::{self, SESSION_COOKIE};
use kobo_queue::access::{Caller, Principal, Refusal};
use kobo_queue::admin::record;
use kobo_queue::unix_now_ms;

/// An event stream ends after this long; the browser reconnects at once,
/// which checks its session again (expiry, revoked key).
const MAX_EVENT_STREAM: Duration = Duration::from_secs(600);
/// The OpenMetrics text format, which Prometheus negotiates and parses.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The principal of the request's session cookie, or anonymous (an unknown
/// or expired cookie is no credential at all; read routes then answer 401).
pub(super) fn session_principal(state: &AppState, headers: &HeaderMap) -> Principal {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| session::cookie_value(value, SESSION_COOKIE))
        .and_then(|token| state.sessions.resolve(token, unix_now_ms(), &state.access))
        .unwrap_or(Principal::Anonymous)
}

pub(super) async fn metrics_get(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = state.observe.metrics_text().await?;
    Ok(([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response())
}

pub(super) async fn status_get(
    State(state): State<AppState>,
) -> Result<Json<ClusterStatus>, ApiError> {
    Ok(Json(state.observe.status().await?))
}

/// `GET /v1/events`: `event: status` with the whole [`ClusterStatus`] at
/// once, then whenever it changes (`?once=true`: only the first, then the
/// stream ends).
pub(super) async fn events_stream(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let once = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .any(|pair| pair == "once=true");
    let receiver = state.observe.subscribe();
    let first = serde_json::to_string(&state.observe.status().await?)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let shutdown = state.observe.shutdown().clone();
    let deadline = tokio::time::Instant::now()
        + if once {
            Duration::ZERO
        } else {
            MAX_EVENT_STREAM
        };
    let updates = stream::unfold(receiver, move |mut receiver| {
        let shutdown = shutdown.clone();
        async move {
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep_until(deadline) => return None,
                    message = receiver.recv() => match message {
                        Ok(json) => return Some((json, receiver)),
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return None,
                    },
                }
            }
        }
    });
    let events = stream::once(async move { first.into() })
        .chain(updates)
        .map(|json: std::sync::Arc<str>| Ok(Event::default().event("status").data(&*json)));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    no_store(response)
}

async fn audit_ok(state: &AppState, caller: &Caller, target: &str) {
    let entry = record(
        caller,
        "session.create",
        Some(target.to_string()),
        "ok",
        None,
    );
    if let Err(err) = state.admin.audit(entry).await {
        tracing::error!(error = %err, "could not audit a dashboard login");
    }
}

/// `POST /v1/session`: an API key of any role but `scaler` opens a
/// read-only session (a scaler key would gain the `read` role).
pub(super) async fn session_create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<SessionCreate>,
) -> Response {
    let id = match state.access.api_key(body.api_key.trim()) {
        Ok(Principal::ApiKey {
            role: AccessRole::Scaler,
            ..
        }) => {
            return deny(
                &state,
                &caller,
                StatusCode::FORBIDDEN,
                "auth.session",
                "a scaler key reads /v1/scaling and /metrics only; it opens no dashboard session"
                    .into(),
            )
            .await;
        }
        Ok(Principal::ApiKey { id, .. }) => id,
        Ok(_) => {
            return deny(
                &state,
                &caller,
                StatusCode::UNAUTHORIZED,
                "auth.session",
                "not an API key".into(),
            )
            .await;
        }
        Err(Refusal::BadKey(why) | Refusal::BadCertificate(why)) => {
            return deny(
                &state,
                &caller,
                StatusCode::UNAUTHORIZED,
                "auth.session",
                why,
            )
            .await;
        }
    };
    let via = format!("apikey:{id}");
    let (token, expires_at) = state.sessions.open(via.clone(), Some(id), unix_now_ms());
    let opened = Caller {
        principal: Principal::Session {
            via: via.clone(),
            role: AccessRole::Read,
        },
        ..caller
    };
    audit_ok(&state, &opened, &via).await;
    let body = SessionCreated {
        role: AccessRole::Read,
        expires_at,
    };
    with_cookie(
        (StatusCode::CREATED, Json(body)).into_response(),
        &session::set_cookie(&token),
    )
}

/// `POST /v1/session/logout`: ends the session of the cookie, if any.
pub(super) async fn session_logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    for value in headers.get_all(header::COOKIE) {
        if let Some(token) = value
            .to_str()
            .ok()
            .and_then(|v| session::cookie_value(v, SESSION_COOKIE))
        {
            state.sessions.close(token);
        }
    }
    with_cookie(
        StatusCode::NO_CONTENT.into_response(),
        &session::clear_cookie(),
    )
}

/// `GET /login?token=`: the one-time URL `serve` prints opens a read-only
/// session and goes to the dashboard.
pub(super) async fn login_url(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Response {
    let presented = query.as_deref().unwrap_or("").split('&').find_map(|pair| {
        pair.strip_prefix("token=")
            .filter(|token| token.chars().all(|c| c.is_ascii_hexdigit()))
    });
    let now = unix_now_ms();
    let redeemed = presented.is_some_and(|token| state.sessions.redeem_login_token(token, now));
    if !redeemed {
        // Audited like any refused credential; the browser goes to the
        // login form, which says why.
        let _ = deny(
            &state,
            &caller,
            StatusCode::UNAUTHORIZED,
            "auth.login_url",
            "the login link was used already, has expired, or is wrong".into(),
        )
        .await;
        let response = (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, "/?login_link=expired")],
        )
            .into_response();
        return no_store(response);
    }
    let (token, _) = state.sessions.open("login-url".into(), None, now);
    let opened = Caller {
        principal: Principal::Session {
            via: "login-url".into(),
            role: AccessRole::Read,
        },
        ..caller
    };
    audit_ok(&state, &opened, "login-url").await;
    let response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    with_cookie(response, &session::set_cookie(&token))
}

fn secure_page_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(dashboard::CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// `GET /`: the dashboard page (public: it holds no data; it logs in).
pub(super) async fn dashboard_index() -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        dashboard::INDEX_HTML,
    )
        .into_response();
    secure_page_headers(response.headers_mut());
    no_store(response)
}

/// `GET /assets/{file}`: the dashboard's embedded files.
pub(super) async fn dashboard_asset(Path(name): Path<String>) -> Response {
    match dashboard::asset(&name) {
        Some((content_type, bytes)) => {
            let mut response = ([(header::CONTENT_TYPE, content_type)], bytes).into_response();
            secure_page_headers(response.headers_mut());
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        None => ApiError::not_found(format!("no dashboard file {name}")).into_response(),
    }
}
