//! `ApiError`, the one error type of every route, and the extractors that turn
//! bad input into 4xx answers naming the field.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use kobo_protocol::{ErrorBody, ErrorDetail};
use serde::de::DeserializeOwned;

use kobo_protocol::validate::FieldError;
use kobo_queue::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for `Retry-After` (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_field",
            message: message.into(),
            field: Some(field.into()),
            retry_after: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<FieldError> for ApiError {
    fn from(err: FieldError) -> ApiError {
        ApiError::invalid_field(err.field, err.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        if err.is_disk_full() {
            tracing::warn!(error = %err, "a write was refused: the disk is full");
            return ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "disk_full",
                "the coordinator's disk is full: nothing was written; writes resume once space is freed in its data directory, then retry",
            );
        }
        if err.is_unavailable() {
            tracing::warn!(error = %err, "the database is unavailable");
            return ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the coordinator's database is unavailable (failing over?): nothing was written; retry",
                )
            };
        }
        match err {
            StoreError::JobNotFound(_) | StoreError::NodeNotFound(_) | StoreError::NotFound(_) => {
                ApiError::not_found(err.to_string())
            }
            StoreError::StaleLease(message) => {
                ApiError::new(StatusCode::CONFLICT, "stale_lease", message)
            }
            StoreError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            StoreError::Forbidden(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
            StoreError::Invalid(message) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
            }
            StoreError::Limited(refusal) => ApiError {
                retry_after: Some(refusal.retry_after_secs()),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, refusal.code, refusal.message)
            },
            other => {
                tracing::error!(error = ?other, "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                field: self.field,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// Turns serde's message and path into the field at fault: for a missing or
/// unknown field the path names the parent, the message names the field.
fn field_of(path: &str, message: &str) -> String {
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    let path = if path == "." { "" } else { path };
    match named {
        Some(name) if path.is_empty() => name.to_string(),
        Some(name) => format!("{path}.{name}"),
        None if path.is_empty() => "body".to_string(),
        None => path.to_string(),
    }
}

/// A JSON body whose errors name the field (`options.temperature`), never a 5xx.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if crate::body_rate::is_slow_body(&rejection) {
                ApiError {
                    field: Some("body".into()),
                    ..ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "slow_body",
                        format!("body: {}", rejection.body_text()),
                    )
                }
            } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "request body too large",
                )
            } else {
                ApiError::invalid_field("body", rejection.body_text())
            }
        })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let message = err.inner().to_string();
            let path = err.path().to_string();
            let syntax = matches!(
                err.inner().classify(),
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof
            );
            // Broken JSON outside any field: the body is at fault.
            let field = if syntax && (path == "." || path.contains('?')) {
                "body".to_string()
            } else {
                field_of(&path, &message)
            };
            ApiError::invalid_field(field.clone(), format!("{field}: {message}"))
        })?;
        de.end()
            .map_err(|err| ApiError::invalid_field("body", format!("body: {err}")))?;
        Ok(ApiJson(value))
    }
}

/// Query parameters whose errors are 400s naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| {
                let text = rejection.body_text();
                ApiError::invalid_field(query_field(&text), text)
            })
    }
}

/// The parameter a query-string error is about: `slots: invalid float
/// literal` names `slots`, `unknown field `kinds`` names `kinds`; else
/// `query`.
fn query_field(text: &str) -> String {
    let message = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(text);
    let named = field_of(".", message);
    if named != "body" {
        return named;
    }
    match message.split_once(": ") {
        Some((field, _))
            if !field.is_empty()
                && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            field.to_string()
        }
        _ => "query".to_string(),
    }
}

/// A path parameter that must parse (`/v1/jobs/{id}`).
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|rejection| {
                ApiError::invalid_field("id", format!("id: {}", rejection.body_text()))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::{field_of, query_field};

    #[test]
    fn query_errors_name_the_parameter() {
        let prefix = "Failed to deserialize query string: ";
        assert_eq!(
            query_field(&format!("{prefix}slots: invalid float literal")),
            "slots"
        );
        assert_eq!(
            query_field(&format!(
                "{prefix}unknown field `kinds`, expected one of `kind`"
            )),
            "kinds"
        );
        assert_eq!(query_field(&format!("{prefix}something else")), "query");
    }

    #[test]
    fn fields_are_named_from_serde_errors() {
        assert_eq!(field_of(".", "missing field `kind`"), "kind");
        assert_eq!(
            field_of("options", "unknown field `temp`, expected one of"),
            "options.temp"
        );
        assert_eq!(field_of("priority", "invalid type: string"), "priority");
        assert_eq!(field_of(".", "EOF while parsing"), "body");
    }
}
