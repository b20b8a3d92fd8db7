//! The knobs: what the fake does ([`FakeBehavior`]) and how it fails
//! ([`FakeFailure`], [`ErrorShape`]).

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

/// The models served unless told otherwise.
pub const DEFAULT_MODELS: [&str; 2] = ["qwen2.5:0.5b", "llama3.2:1b"];

/// Tokens in a reply unless told otherwise.
pub const DEFAULT_RESPONSE_TOKENS: u32 = 8;

/// What the fake does; change it at runtime with
/// [`FakeLlm::set_behavior`](crate::FakeLlm::set_behavior) or
/// `POST /_fake/behavior`. All knobs but `models` apply to the model
/// endpoints only: generation (`/api/generate`, `/api/chat`,
/// `/v1/chat/completions`, `/v1/completions`) and embeddings
/// (`/api/embed`, `/api/embeddings`, `/v1/embeddings`, which never
/// stream: the streaming knobs do not apply, a mid-stream failure
/// answers as [`ErrorShape::OpenAi`] does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FakeBehavior {
    /// Model names served; others get a 404.
    pub models: Vec<String>,
    /// Delay before the response headers (the first byte), in milliseconds.
    pub latency_ms: u64,
    /// Streaming pace; 0 sends every chunk as fast as possible.
    pub tokens_per_second: f64,
    /// Tokens in a reply.
    pub response_tokens: u32,
    /// Answer with an error instead.
    pub fail: Option<FakeFailure>,
    /// Accept the request and never answer, until the client goes away.
    pub hang: bool,
    /// Hold requests that arrive while this is set until it is cleared (by
    /// a later behavior), then answer them as the behavior then says. Lets a
    /// test wait for the event "the call reached the LLM" and decide when it
    /// ends, instead of guessing with a latency.
    pub hold: bool,
    /// Stop a streamed reply after this many chunks (NDJSON lines or SSE
    /// events), before `done`/`[DONE]`.
    pub cut_after_chunks: Option<u32>,
    /// How the cut looks: `false` aborts the connection mid-body (an
    /// unterminated chunked body, as when a server dies); `true` ends the
    /// body properly, just without `done`/`[DONE]`.
    pub cut_clean: bool,
    /// A generation or embedding request whose body holds this text gets
    /// its caller SIGKILLed (the local process owning the connection's
    /// other end): a poison job, which takes its agent down every time.
    pub kill_caller_on: Option<String>,
}

impl Default for FakeBehavior {
    fn default() -> Self {
        FakeBehavior {
            models: DEFAULT_MODELS.iter().map(|m| (*m).to_owned()).collect(),
            latency_ms: 0,
            tokens_per_second: 0.0,
            response_tokens: DEFAULT_RESPONSE_TOKENS,
            fail: None,
            hang: false,
            hold: false,
            cut_after_chunks: None,
            cut_clean: false,
            kill_caller_on: None,
        }
    }
}

/// An error the model endpoints answer with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FakeFailure {
    /// The HTTP status (ignored by [`ErrorShape::Midstream`], which answers
    /// 200; OpenAI mid-stream errors carry it as their `code`).
    pub status: u16,
    pub shape: ErrorShape,
    /// The error message; a stock one for the status when absent.
    pub message: Option<String>,
    /// Fail only this many model requests after the behavior is set,
    /// then succeed; `None` fails them all.
    pub first_n: Option<u64>,
}

impl Default for FakeFailure {
    fn default() -> Self {
        FakeFailure {
            status: 500,
            shape: ErrorShape::OpenAi,
            message: None,
            first_n: None,
        }
    }
}

impl FakeFailure {
    /// Fails every model request with `status` in the default shape.
    pub fn status(status: u16) -> Self {
        FakeFailure {
            status,
            ..FakeFailure::default()
        }
    }

    /// The status to answer with; 500 for one HTTP has no name for.
    pub(crate) fn http_status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The error message: the configured one, or a stock one for the status.
    pub(crate) fn text(&self) -> String {
        self.message.clone().unwrap_or_else(|| match self.status {
            400 => "invalid request (fake)".to_owned(),
            401 => "invalid api key (fake)".to_owned(),
            429 => "rate limit reached, retry later (fake)".to_owned(),
            500 => "internal server error (fake)".to_owned(),
            503 => "server overloaded (fake)".to_owned(),
            status => format!("fake failure with status {status}"),
        })
    }
}

/// How an error looks on the wire. Ollama endpoints always answer
/// `{"error":"..."}` with the status, or an error line mid-stream for
/// [`ErrorShape::Midstream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorShape {
    /// `{"error":{"message","type","param","code"}}` with the status.
    #[default]
    OpenAi,
    /// Older vLLM: top-level `{"object":"error","message","type","param","code"}`.
    Vllm,
    /// 200, a first chunk, then the error inside the stream.
    Midstream,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn behavior_json_round_trips_and_fills_defaults() {
        let partial: FakeBehavior = serde_json::from_value(json!({
            "hang": true,
            "fail": {"status": 429, "shape": "vllm", "first_n": 2}
        }))
        .expect("valid behavior");
        assert!(partial.hang);
        assert_eq!(partial.models, DEFAULT_MODELS);
        let fail = partial.fail.clone().expect("fail set");
        assert_eq!(
            (fail.status, fail.shape, fail.first_n),
            (429, ErrorShape::Vllm, Some(2))
        );
        let back: FakeBehavior =
            serde_json::from_value(serde_json::to_value(&partial).expect("serializes"))
                .expect("parses");
        assert_eq!(back, partial);
        assert!(serde_json::from_value::<FakeBehavior>(json!({"nope": 1})).is_err());
    }
}
