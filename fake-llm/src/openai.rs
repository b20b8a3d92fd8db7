//! The OpenAI wire format (and older vLLM's errors): `/v1/models`, the SSE
//! chunks of `/v1/chat/completions` and of the legacy `/v1/completions` or
//! their whole replies (text or a tool call), and error bodies.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use crate::behavior::ErrorShape;
use crate::generate::{Api, generation};
use crate::reply::Reply;
use crate::server::{Shared, json_response};
use crate::stream::Frame;

pub(crate) async fn completions(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    generation(shared, Api::OpenAi, "/v1/chat/completions", body).await
}

/// The legacy `/v1/completions`.
pub(crate) async fn legacy(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    generation(shared, Api::OpenAiLegacy, "/v1/completions", body).await
}

/// `GET /v1/models/{id}`: one served model.
pub(crate) async fn model(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let served = shared.control().behavior.models.contains(&id);
    if !served {
        return model_not_found(&id);
    }
    json_response(StatusCode::OK, model_entry(&id, unix_seconds()))
}

fn model_entry(id: &str, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": "library"})
}

/// `/v1/models`: every model served.
pub(crate) async fn models(State(shared): State<Arc<Shared>>) -> Response {
    let models = shared.control().behavior.models.clone();
    let created = unix_seconds();
    let data: Vec<Value> = models.iter().map(|id| model_entry(id, created)).collect();
    json_response(StatusCode::OK, json!({"object": "list", "data": data}))
}

pub(crate) fn bad_request(message: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}}),
    )
}

pub(crate) fn model_not_found(model: &str) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"error": {
            "message": format!("The model `{model}` does not exist or you do not have access to it."),
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }}),
    )
}

/// A configured failure in its shape (a mid-stream one answering a
/// non-streamed request looks like OpenAI's).
pub(crate) fn failure(status: StatusCode, shape: ErrorShape, message: &str) -> Response {
    let body = match shape {
        ErrorShape::Vllm => vllm_error(status, message),
        ErrorShape::OpenAi | ErrorShape::Midstream => openai_error(status, message),
    };
    json_response(status, body)
}

fn openai_error(status: StatusCode, message: &str) -> Value {
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", json!("invalid_api_key")),
        429 => ("requests", json!("rate_limit_exceeded")),
        400..=499 => ("invalid_request_error", Value::Null),
        _ => ("server_error", Value::Null),
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn vllm_error(status: StatusCode, message: &str) -> Value {
    json!({
        "object": "error",
        "message": message,
        "type": vllm_type(status),
        "param": null,
        "code": status.as_u16(),
    })
}

fn vllm_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        404 => "NotFoundError",
        429 => "RateLimitError",
        400..=499 => "BadRequestError",
        _ => "InternalServerError",
    }
}

impl Reply {
    /// One SSE event of a stream.
    pub(crate) fn openai_event(&self, frame: &Frame) -> Bytes {
        let value = match frame {
            Frame::Done => return Bytes::from_static(b"data: [DONE]\n\n"),
            Frame::Role => match &self.call {
                Some(call) => self.openai_chunk(
                    json!({"role": "assistant", "content": null, "tool_calls": [{
                        "index": 0,
                        "id": call.openai_id(),
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }]}),
                    None,
                ),
                None => self.openai_chunk(json!({"role": "assistant", "content": ""}), None),
            },
            Frame::Piece(piece) if self.call.is_some() => self.openai_chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                None,
            ),
            Frame::Piece(piece) if self.api == Api::OpenAiLegacy => self.legacy_chunk(piece, None),
            Frame::Piece(piece) => self.openai_chunk(json!({"content": piece}), None),
            Frame::Finish if self.api == Api::OpenAiLegacy => {
                self.legacy_chunk("", Some(self.reason()))
            }
            Frame::Finish => self.openai_chunk(json!({}), Some(self.reason())),
            Frame::Usage => {
                let mut usage = if self.api == Api::OpenAiLegacy {
                    self.legacy_chunk("", None)
                } else {
                    self.openai_chunk(json!({}), None)
                };
                usage["choices"] = json!([]);
                usage["usage"] = self.openai_usage();
                usage
            }
            // Ollama's alone.
            Frame::Call => return Bytes::new(),
            Frame::Error(message, status) => json!({"error": {
                "message": message,
                "type": vllm_type(*status),
                "param": null,
                "code": status.as_u16(),
            }}),
        };
        Bytes::from(format!("data: {value}\n\n"))
    }

    fn openai_id(&self) -> String {
        let prefix = if self.api == Api::OpenAiLegacy {
            "cmpl"
        } else {
            "chatcmpl"
        };
        format!(
            "{prefix}-{:024x}",
            u128::from(self.id) * 0x9e37_79b9_7f4a_7c15
        )
    }

    /// A legacy completions chunk (`include_usage` adds `usage: null`).
    fn legacy_chunk(&self, text: &str, finish: Option<&str>) -> Value {
        let mut chunk = json!({
            "id": self.openai_id(),
            "object": "text_completion",
            "created": unix_seconds(),
            "model": self.model,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn openai_chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        let mut chunk = json!({
            "id": self.openai_id(),
            "object": "chat.completion.chunk",
            "created": unix_seconds(),
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn openai_usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens(),
            "total_tokens": self.prompt_tokens + self.completion_tokens(),
        })
    }

    /// The whole non-streamed reply.
    pub(crate) fn openai_whole(&self) -> Value {
        if self.api == Api::OpenAiLegacy {
            let mut whole = self.legacy_chunk(&self.text(), Some(self.reason()));
            whole["usage"] = self.openai_usage();
            return whole;
        }
        let message = match &self.call {
            Some(call) => json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": call.openai_id(),
                    "type": "function",
                    "function": {"name": call.name, "arguments": self.text()},
                }],
                "refusal": null,
            }),
            None => json!({"role": "assistant", "content": self.text(), "refusal": null}),
        };
        json!({
            "id": self.openai_id(),
            "object": "chat.completion",
            "created": unix_seconds(),
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": self.reason(),
            }],
            "usage": self.openai_usage(),
        })
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
