//! Error bodies in each route's own shape, for tests that walk every route:
//! kobo's, the OpenAI gateway's (which carries kobo's `code`) and Ollama's.

use kobo_protocol::ErrorBody;
use serde_json::Value;

/// The error of an answer in its route's shape: kobo's (and the OpenAI
/// gateway's, which carries the same `code`), or Ollama's `{"error": "…"}`
/// for the Ollama gateway routes.
pub(crate) fn error_body(path: &str, answer: &[u8]) -> Option<ErrorBody> {
    if path.starts_with("/api/") {
        let value: Value = serde_json::from_slice(answer).ok()?;
        let message = value.get("error")?.as_str()?.to_string();
        return (value.as_object()?.len() == 1 && !message.is_empty()).then(|| ErrorBody {
            error: kobo_protocol::ErrorDetail {
                code: String::new(),
                message,
                field: None,
            },
        });
    }
    serde_json::from_slice(answer).ok()
}
