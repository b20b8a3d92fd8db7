//! The gateway's calls: an OpenAI or Ollama API request a client sent to the
//! coordinator, carried as a job to an agent, which calls its backend with it
//! and streams the answer back in the same API's framing.

use serde::{Deserialize, Serialize};

/// The capability every agent whose backend is Ollama declares: calls of
/// Ollama's own API (`/api/chat`, …) need a node that has it. (Every backend
/// kobo supports serves OpenAI's API.)
pub const OLLAMA_API_CAPABILITY: &str = "ollama_api";

/// The API route a gateway call came in through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayApi {
    /// `POST /v1/chat/completions`
    OpenAiChat,
    /// `POST /v1/completions`
    OpenAiCompletions,
    /// `POST /v1/embeddings`
    OpenAiEmbeddings,
    /// `POST /api/chat`
    OllamaChat,
    /// `POST /api/generate`
    OllamaGenerate,
    /// `POST /api/embed`
    OllamaEmbed,
    /// `POST /api/embeddings` (Ollama's older embedding route)
    OllamaEmbeddings,
}

impl GatewayApi {
    /// Every API the gateway serves.
    pub const ALL: [GatewayApi; 7] = [
        GatewayApi::OpenAiChat,
        GatewayApi::OpenAiCompletions,
        GatewayApi::OpenAiEmbeddings,
        GatewayApi::OllamaChat,
        GatewayApi::OllamaGenerate,
        GatewayApi::OllamaEmbed,
        GatewayApi::OllamaEmbeddings,
    ];

    /// The path of this API on a backend (and on the coordinator).
    pub fn path(self) -> &'static str {
        match self {
            GatewayApi::OpenAiChat => "/v1/chat/completions",
            GatewayApi::OpenAiCompletions => "/v1/completions",
            GatewayApi::OpenAiEmbeddings => "/v1/embeddings",
            GatewayApi::OllamaChat => "/api/chat",
            GatewayApi::OllamaGenerate => "/api/generate",
            GatewayApi::OllamaEmbed => "/api/embed",
            GatewayApi::OllamaEmbeddings => "/api/embeddings",
        }
    }

    /// Ollama's own API (NDJSON streams, `{"error": "…"}` errors), or OpenAI's
    /// (SSE streams, `{"error": {message, type, param, code}}`).
    pub fn is_ollama(self) -> bool {
        matches!(
            self,
            GatewayApi::OllamaChat
                | GatewayApi::OllamaGenerate
                | GatewayApi::OllamaEmbed
                | GatewayApi::OllamaEmbeddings
        )
    }

    /// Whether the API can stream at all (embeddings never do).
    pub fn can_stream(self) -> bool {
        matches!(
            self,
            GatewayApi::OpenAiChat
                | GatewayApi::OpenAiCompletions
                | GatewayApi::OllamaChat
                | GatewayApi::OllamaGenerate
        )
    }

    /// The content type of a streamed answer.
    pub fn stream_content_type(self) -> &'static str {
        if self.is_ollama() {
            "application/x-ndjson"
        } else {
            "text/event-stream"
        }
    }
}

/// A client's call as the agent makes it: the body the client sent (checked
/// by the coordinator), to be posted to the backend's [`GatewayApi::path`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayCall {
    pub api: GatewayApi,
    pub body: serde_json::Value,
    /// Whether the answer streams (the body's `stream`, with each API's
    /// default: Ollama streams unless told not to, OpenAI does not).
    pub stream: bool,
    /// Set when an earlier attempt's stream broke after it reached the
    /// client: what that stream had said, for this attempt to continue
    /// from (see [`crate::resume`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<crate::resume::Resume>,
}

/// `POST /v1/agent/jobs/{id}/stream?node_id=&lease_token=`: the agent sends
/// its backend's answer as the backend produces it; the coordinator relays
/// it to the waiting client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    pub node_id: String,
    pub lease_token: i64,
}
