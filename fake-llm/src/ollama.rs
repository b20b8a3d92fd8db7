//! Ollama's wire format: `/api/tags` and `/api/ps`, the NDJSON lines of
//! `/api/generate` and `/api/chat`, and `{"error":"..."}` errors.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use crate::generate::{Api, generation};
use crate::reply::{Reply, fnv1a};
use crate::server::{Shared, json_response};
use crate::stream::Frame;

/// The `load_duration` every Ollama reply reports, in nanoseconds (2.5 ms).
pub const LOAD_DURATION_NS: u64 = 2_500_000;

/// Ollama keeps a model loaded this long after its last use (`expires_at`).
const KEEP_ALIVE: Duration = Duration::from_secs(300);

pub(crate) async fn generate(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    generation(shared, Api::OllamaGenerate, "/api/generate", body).await
}

pub(crate) async fn chat(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    generation(shared, Api::OllamaChat, "/api/chat", body).await
}

/// `/api/tags`: every model served.
pub(crate) async fn tags(State(shared): State<Arc<Shared>>) -> Response {
    let models = shared.control().behavior.models.clone();
    let now = rfc3339(SystemTime::now());
    let entries: Vec<Value> = models
        .iter()
        .map(|name| {
            json!({
                "name": name,
                "model": name,
                "modified_at": now,
                "size": model_size(name),
                "digest": digest(name),
                "details": model_details(name),
            })
        })
        .collect();
    json_response(StatusCode::OK, json!({"models": entries}))
}

/// `/api/ps`: the models served that have answered a request.
pub(crate) async fn ps(State(shared): State<Arc<Shared>>) -> Response {
    let (models, loaded) = {
        let control = shared.control();
        (control.behavior.models.clone(), control.loaded.clone())
    };
    let expires = rfc3339(SystemTime::now() + KEEP_ALIVE);
    let entries: Vec<Value> = models
        .iter()
        .filter(|m| loaded.contains(*m))
        .map(|name| {
            json!({
                "name": name,
                "model": name,
                "size": model_size(name),
                "digest": digest(name),
                "details": model_details(name),
                "expires_at": expires,
                "size_vram": model_size(name),
            })
        })
        .collect();
    json_response(StatusCode::OK, json!({"models": entries}))
}

pub(crate) fn model_details(name: &str) -> Value {
    let family = name.split(':').next().unwrap_or(name);
    let parameter_size = name
        .split_once(':')
        .map(|(_, tag)| tag.to_uppercase())
        .unwrap_or_else(|| "unknown".to_owned());
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": parameter_size,
        "quantization_level": "Q4_K_M",
    })
}

pub(crate) fn model_size(name: &str) -> u64 {
    300_000_000 + fnv1a(name.as_bytes()) % 1_000_000_000
}

pub(crate) fn digest(name: &str) -> String {
    (0..4u8)
        .map(|i| format!("{:016x}", fnv1a(format!("{i}{name}").as_bytes())))
        .collect()
}

/// Ollama's error body, whatever the status.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({"error": message}))
}

pub(crate) fn model_not_found(model: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!("model \"{model}\" not found, try pulling it first"),
    )
}

impl Reply {
    /// One NDJSON line of a stream. Ollama has no `[DONE]`: its `done`
    /// line ends the stream.
    pub(crate) fn ollama_line(&self, frame: &Frame) -> Bytes {
        let line = match frame {
            Frame::Piece(piece) => self.ollama_piece(piece),
            Frame::Call => {
                let mut line = self.ollama_piece("");
                line["message"]["tool_calls"] = self.ollama_tool_calls();
                line
            }
            Frame::Error(message, _) => json!({"error": message}),
            Frame::Finish | Frame::Usage | Frame::Role | Frame::Done => self.ollama_final(false),
        };
        Bytes::from(format!("{line}\n"))
    }

    /// An Ollama streaming line with one piece of text.
    fn ollama_piece(&self, piece: &str) -> Value {
        let mut line = json!({
            "model": self.model,
            "created_at": rfc3339(SystemTime::now()),
        });
        if self.api == Api::OllamaChat {
            line["message"] = json!({"role": "assistant", "content": piece});
        } else {
            line["response"] = json!(piece);
        }
        line["done"] = json!(false);
        line
    }

    /// `message.tool_calls`: the call, its arguments an object.
    fn ollama_tool_calls(&self) -> Value {
        match &self.call {
            Some(call) => json!([{
                "id": call.ollama_id(),
                "function": {"index": 0, "name": call.name, "arguments": call.arguments},
            }]),
            None => json!([]),
        }
    }

    /// The last Ollama line (or, `whole`, the entire non-streamed reply).
    pub(crate) fn ollama_final(&self, whole: bool) -> Value {
        let text = if whole && self.call.is_none() {
            self.text()
        } else {
            String::new()
        };
        let mut line = self.ollama_piece(&text);
        if whole && self.call.is_some() {
            line["message"]["tool_calls"] = self.ollama_tool_calls();
        }
        let total = u64::try_from(self.started.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(LOAD_DURATION_NS);
        let prompt_eval = 1_000_000 * self.prompt_tokens;
        line["done"] = json!(true);
        line["done_reason"] = json!(self.reason());
        if self.api == Api::OllamaGenerate {
            let context: Vec<u64> = (1..=self.prompt_tokens + self.completion_tokens()).collect();
            line["context"] = json!(context);
        }
        line["total_duration"] = json!(total.saturating_add(prompt_eval));
        line["load_duration"] = json!(LOAD_DURATION_NS);
        line["prompt_eval_count"] = json!(self.prompt_tokens);
        line["prompt_eval_duration"] = json!(prompt_eval);
        line["eval_count"] = json!(self.completion_tokens());
        line["eval_duration"] = json!(total.saturating_sub(LOAD_DURATION_NS));
        line
    }
}

/// `2024-05-01T12:34:56.123456789Z`.
pub(crate) fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_nanos(at).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap_day = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap_day), "2000-02-29T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000000005Z");
    }
}
