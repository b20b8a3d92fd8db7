//! Errors in each API's own shape: OpenAI's
//! `{"error":{"message","type","param","code"}}` and Ollama's
//! `{"error":"…"}`, with the status the real servers use. Refusals made before
//! a gateway handler runs (a bad key, a missing role) are kobo's shape; the
//! [`api_shaped`] middleware rewrites them for gateway paths.

use axum::Json;
use axum::body::to_bytes;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kobo_protocol::ErrorBody;
use serde_json::{Value, json};

/// Which error shape a path answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Ollama,
}

/// Gateway paths and their dialect; other paths answer in kobo's shape.
pub fn dialect_of(path: &str) -> Option<Dialect> {
    const OPENAI: &[&str] = &[
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
    ];
    if path.starts_with("/api/") {
        return Some(Dialect::Ollama);
    }
    OPENAI
        .iter()
        .any(|p| path == *p || path.starts_with("/v1/models/"))
        .then_some(Dialect::OpenAi)
}

/// An error of a gateway route.
#[derive(Debug, Clone)]
pub struct GatewayError {
    pub dialect: Dialect,
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, …
    pub kind: &'static str,
    /// OpenAI's `param`: the field at fault.
    pub param: Option<String>,
    /// OpenAI's `code`: `model_not_found`, …
    pub code: Option<String>,
    /// Seconds, for 503 and 429.
    pub retry_after: Option<u64>,
}

impl GatewayError {
    pub fn new(dialect: Dialect, status: StatusCode, message: impl Into<String>) -> Self {
        let kind = match status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                "invalid_request_error"
            }
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            _ => "server_error",
        };
        // kobo's stable codes, also in OpenAI's `code`.
        let code = match status {
            StatusCode::BAD_REQUEST => "invalid_field",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::BAD_GATEWAY => "bad_gateway",
            _ => "internal",
        };
        GatewayError {
            dialect,
            status,
            message: message.into(),
            kind,
            param: None,
            code: Some(code.into()),
            retry_after: None,
        }
    }

    /// 400 naming the field at fault.
    pub fn field(dialect: Dialect, field: &str, message: impl Into<String>) -> Self {
        let mut err = GatewayError::new(dialect, StatusCode::BAD_REQUEST, message);
        err.param = Some(field.to_owned());
        err
    }

    /// 429 for a request over its key's rate limit or budget, as OpenAI
    /// words them: `type` `requests` or `tokens` with code
    /// `rate_limit_exceeded`, or `insufficient_quota` for a spent budget;
    /// Ollama's plain `error`.
    pub fn limited(dialect: Dialect, refusal: &kobo_queue::tenancy::Refusal) -> Self {
        let mut err = GatewayError::new(dialect, StatusCode::TOO_MANY_REQUESTS, &refusal.message);
        let (kind, code) = match refusal.limit {
            "requests" => ("requests", "rate_limit_exceeded"),
            "tokens" => ("tokens", "rate_limit_exceeded"),
            _ => ("insufficient_quota", "insufficient_quota"),
        };
        err.kind = kind;
        err.code = Some(code.into());
        err.retry_after = Some(refusal.retry_after_secs());
        err
    }

    /// 404 for a model no active node serves, worded as each server words it.
    pub fn model_not_found(dialect: Dialect, model: &str) -> Self {
        let message = match dialect {
            Dialect::OpenAi => {
                format!("The model `{model}` does not exist or you do not have access to it.")
            }
            Dialect::Ollama => format!("model \"{model}\" not found, try pulling it first"),
        };
        let mut err = GatewayError::new(dialect, StatusCode::NOT_FOUND, message);
        err.param = Some("model".into());
        err.code = Some("model_not_found".into());
        err
    }

    /// The JSON body of this error.
    pub fn body(&self) -> Value {
        match self.dialect {
            Dialect::OpenAi => json!({
                "error": {
                    "message": self.message,
                    "type": self.kind,
                    "param": self.param,
                    "code": self.code,
                }
            }),
            Dialect::Ollama => json!({ "error": self.message }),
        }
    }

    /// The error as one event of a stream already under way: an SSE `data:`
    /// event for OpenAI, an NDJSON line for Ollama.
    pub fn stream_event(&self) -> String {
        match self.dialect {
            Dialect::OpenAi => format!("data: {}\n\n", self.body()),
            Dialect::Ollama => format!("{}\n", self.body()),
        }
    }
}

/// Marks an answer already in its API's shape, so [`api_shaped`] leaves it.
#[derive(Debug, Clone, Copy)]
struct Shaped;

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        response.extensions_mut().insert(Shaped);
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// Largest kobo error body rewritten (anything larger is not one).
const MAX_KOBO_ERROR_BYTES: usize = 64 * 1024;

/// Rewrites kobo-shaped error answers of gateway paths (401 from a bad key,
/// 403 from a missing role, 404 for no route) into the path's API shape.
pub async fn api_shaped(request: Request, next: Next) -> Response {
    let Some(dialect) = dialect_of(request.uri().path()) else {
        return next.run(request).await;
    };
    let response = next.run(request).await;
    if response.status().is_success()
        || response.status().is_informational()
        || response.extensions().get::<Shaped>().is_some()
    {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = match to_bytes(body, MAX_KOBO_ERROR_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => return GatewayError::new(dialect, parts.status, "error").into_response(),
    };
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(kobo) => {
            let mut err = GatewayError::new(dialect, parts.status, kobo.error.message);
            err.param = kobo.error.field;
            // kobo's stable code (`unauthorized`, `forbidden`, …) in OpenAI's
            // `code`, for clients that branch on it.
            err.code = Some(kobo.error.code);
            let mut rewritten = err.into_response();
            for (name, value) in &parts.headers {
                if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                    rewritten.headers_mut().insert(name.clone(), value.clone());
                }
            }
            rewritten
        }
        // Already in the API's shape (a gateway handler's own error).
        Err(_) => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_api_has_its_own_shape() {
        let openai = GatewayError::model_not_found(Dialect::OpenAi, "nope");
        assert_eq!(openai.status, StatusCode::NOT_FOUND);
        assert_eq!(openai.body()["error"]["code"], "model_not_found");
        assert_eq!(openai.body()["error"]["type"], "invalid_request_error");
        assert_eq!(openai.body()["error"]["param"], "model");
        let ollama = GatewayError::model_not_found(Dialect::Ollama, "nope");
        assert_eq!(
            ollama.body(),
            json!({"error": "model \"nope\" not found, try pulling it first"})
        );
        assert!(ollama.stream_event().ends_with('\n'));
        assert!(
            GatewayError::new(Dialect::OpenAi, StatusCode::BAD_GATEWAY, "x")
                .stream_event()
                .starts_with("data: {")
        );
    }

    #[test]
    fn gateway_paths_are_told_apart_from_kobos() {
        assert_eq!(dialect_of("/api/chat"), Some(Dialect::Ollama));
        assert_eq!(dialect_of("/v1/chat/completions"), Some(Dialect::OpenAi));
        assert_eq!(dialect_of("/v1/models/qwen2.5"), Some(Dialect::OpenAi));
        assert_eq!(dialect_of("/v1/jobs"), None);
        assert_eq!(dialect_of("/v1/status"), None);
    }
}
