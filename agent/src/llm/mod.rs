//! LLM backends the agent runs jobs on: Ollama's native API, any
//! OpenAI-compatible server (vLLM, llama.cpp, Ollama's `/v1`), and a
//! simulator for tests and demos.
//!
//! [`LlmClient::run`] streams the reply and is cancel-safe: dropping its
//! future drops the HTTP request, which closes the connection, so per-job
//! timeouts and cancellation are the caller's `select!`/`timeout`.
//!
//! Gateway calls (an OpenAI or Ollama API request relayed by the
//! coordinator) go through [`LlmClient::gateway_open`] instead: the client's
//! own body, posted unchanged, its answer read chunk by chunk.

#[doc(hidden)]
pub mod fuzzing;
mod gateway;
mod gateway_output;
mod ollama;
mod openai;
mod sim;

use std::sync::Arc;
use std::time::Duration;

use kobo_protocol::{LlmOutput, LlmRequest};
use reqwest::StatusCode;

pub use gateway::{GatewayReply, ReplyPiece};

/// Connecting to the backend must succeed within this long; a backend that
/// does not even accept the connection is down, not busy.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this much of an error reply is read (bytes): enough for any
/// error document, bounded against a misbehaving server.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// At most this much of a non-streamed reply (model lists) is read (bytes).
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// One NDJSON line or SSE event may be at most this long (bytes); a token
/// chunk is tiny, so a longer one means a broken server.
const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// A server's error text is cut to this many characters in our messages.
const MAX_MESSAGE_CHARS: usize = 500;

/// Which kind of server answers the agent's LLM calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Ollama's native API (`/api/generate`, `/api/chat`).
    Ollama,
    /// An OpenAI-compatible `/v1/chat/completions` server.
    OpenAi,
    /// No server: deterministic text after a configured latency.
    Sim,
}

impl BackendKind {
    pub const ALL: [BackendKind; 3] = [BackendKind::Ollama, BackendKind::OpenAi, BackendKind::Sim];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Ollama => "ollama",
            BackendKind::OpenAi => "openai",
            BackendKind::Sim => "sim",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend name that is none of `ollama`, `openai`, `sim`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown llm backend {0:?}: expected one of ollama, openai, sim")]
pub struct UnknownBackend(pub String);

impl std::str::FromStr for BackendKind {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackendKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| UnknownBackend(s.to_owned()))
    }
}

/// How to reach the backend.
#[derive(Clone)]
pub struct LlmConfig {
    pub kind: BackendKind,
    /// Base URL, e.g. `http://127.0.0.1:11434` (Ollama, the default) or
    /// `http://host:8000` (OpenAI-compatible, with or without a trailing
    /// `/v1`; default `http://127.0.0.1:8000`).
    pub endpoint: Option<String>,
    /// Sent as a Bearer token to OpenAI-compatible servers.
    pub api_key: Option<String>,
    /// Used when a request names no model.
    pub default_model: Option<String>,
    /// Sim backend: how long one call takes.
    pub sim_latency: Duration,
    /// An overall limit on any one call; `None` for none.
    pub request_timeout: Option<Duration>,
}

impl std::fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmConfig")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("default_model", &self.default_model)
            .field("sim_latency", &self.sim_latency)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// A failed LLM call; `retryable` says whether another attempt (perhaps on
/// another node) may succeed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LlmError {
    pub retryable: bool,
    pub message: String,
}

impl LlmError {
    /// A failure another attempt may not hit: server down, busy, cut stream.
    pub fn retryable(message: impl Into<String>) -> Self {
        LlmError {
            retryable: true,
            message: message.into(),
        }
    }

    /// A failure every attempt would hit: bad request, unknown model.
    pub fn permanent(message: impl Into<String>) -> Self {
        LlmError {
            retryable: false,
            message: message.into(),
        }
    }
}

/// A handle on the configured backend; cheap to clone.
#[derive(Clone)]
pub struct LlmClient {
    inner: Arc<Inner>,
}

struct Inner {
    kind: BackendKind,
    default_model: Option<String>,
    request_timeout: Option<Duration>,
    backend: Backend,
}

enum Backend {
    Ollama(Http),
    OpenAi(Http),
    Sim { latency: Duration },
}

/// What the HTTP backends share: a client, the base URL without a trailing
/// slash (and, for OpenAI, without `/v1`), and the optional Bearer token.
pub(crate) struct Http {
    client: reqwest::Client,
    base: String,
    api_key: Option<String>,
    /// Names the backend in error messages.
    name: &'static str,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("LlmClient");
        s.field("kind", &self.inner.kind);
        if let Backend::Ollama(http) | Backend::OpenAi(http) = &self.inner.backend {
            s.field("base", &http.base);
        }
        s.field("default_model", &self.inner.default_model).finish()
    }
}

impl LlmClient {
    pub fn new(config: LlmConfig) -> Result<LlmClient, LlmError> {
        let backend = match config.kind {
            BackendKind::Ollama => Backend::Ollama(Http::new(
                "ollama",
                config
                    .endpoint
                    .as_deref()
                    .unwrap_or(ollama::DEFAULT_ENDPOINT),
                config.api_key.clone(),
                false,
            )?),
            BackendKind::OpenAi => Backend::OpenAi(Http::new(
                "openai",
                config
                    .endpoint
                    .as_deref()
                    .unwrap_or(openai::DEFAULT_ENDPOINT),
                config.api_key.clone(),
                true,
            )?),
            BackendKind::Sim => Backend::Sim {
                latency: config.sim_latency,
            },
        };
        Ok(LlmClient {
            inner: Arc::new(Inner {
                kind: config.kind,
                default_model: config.default_model.filter(|m| !m.is_empty()),
                request_timeout: config.request_timeout,
                backend,
            }),
        })
    }

    pub fn kind(&self) -> BackendKind {
        self.inner.kind
    }

    /// The models the backend serves (for the sim backend, the default
    /// model or `sim`).
    pub async fn list_models(&self) -> Result<Vec<String>, LlmError> {
        let inner = &self.inner;
        self.limited(async move {
            match &inner.backend {
                Backend::Ollama(http) => ollama::list_models(http).await,
                Backend::OpenAi(http) => openai::list_models(http).await,
                Backend::Sim { .. } => Ok(vec![
                    inner
                        .default_model
                        .clone()
                        .unwrap_or_else(|| sim::MODEL.to_owned()),
                ]),
            }
        })
        .await
    }

    /// The models loaded in memory now, when the backend can tell (Ollama).
    pub async fn loaded_models(&self) -> Result<Option<Vec<String>>, LlmError> {
        let inner = &self.inner;
        self.limited(async move {
            match &inner.backend {
                Backend::Ollama(http) => ollama::loaded_models(http).await.map(Some),
                Backend::OpenAi(_) | Backend::Sim { .. } => Ok(None),
            }
        })
        .await
    }

    /// Runs one call to the end of its streamed reply. Cancel-safe.
    pub async fn run(&self, request: &LlmRequest) -> Result<LlmOutput, LlmError> {
        let inner = &self.inner;
        let name = inner.kind.as_str();
        if request.prompt.is_none() && request.messages.as_ref().is_none_or(Vec::is_empty) {
            return Err(LlmError::permanent(format!(
                "{name}: the request has neither a prompt nor messages"
            )));
        }
        let model = request
            .model
            .clone()
            .filter(|m| !m.is_empty())
            .or_else(|| inner.default_model.clone());
        self.limited(async move {
            match &inner.backend {
                Backend::Ollama(http) => {
                    ollama::run(http, &need_model(name, model)?, request).await
                }
                Backend::OpenAi(http) => {
                    openai::run(http, &need_model(name, model)?, request).await
                }
                Backend::Sim { latency } => {
                    let model = model.unwrap_or_else(|| sim::MODEL.to_owned());
                    Ok(sim::run(*latency, model, request).await)
                }
            }
        })
        .await
    }

    /// Applies the configured overall timeout, if any.
    pub(crate) async fn limited<T>(
        &self,
        call: impl Future<Output = Result<T, LlmError>>,
    ) -> Result<T, LlmError> {
        let Some(limit) = self.inner.request_timeout else {
            return call.await;
        };
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(LlmError::retryable(format!(
                "{}: no answer within the request timeout of {}",
                self.inner.kind,
                describe_duration(limit)
            ))),
        }
    }
}

fn need_model(name: &str, model: Option<String>) -> Result<String, LlmError> {
    model.ok_or_else(|| {
        LlmError::permanent(format!(
            "{name}: no model: the job names none and the agent has no --llm-model"
        ))
    })
}

fn describe_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl Http {
    fn new(
        name: &'static str,
        endpoint: &str,
        api_key: Option<String>,
        strip_v1: bool,
    ) -> Result<Http, LlmError> {
        let url = reqwest::Url::parse(endpoint.trim()).map_err(|err| {
            LlmError::permanent(format!("{name}: bad endpoint {endpoint:?}: {err}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(LlmError::permanent(format!(
                "{name}: bad endpoint {endpoint:?}: expected an http:// or https:// URL"
            )));
        }
        let mut base = url.as_str().trim_end_matches('/').to_owned();
        if strip_v1 && let Some(stripped) = base.strip_suffix("/v1") {
            base = stripped.to_owned();
        }
        // reqwest panics when building a client without a process-wide
        // rustls provider; the binary installs ring, this covers other hosts.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("kobo-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| {
                LlmError::permanent(format!("{name}: cannot build HTTP client: {}", chain(&err)))
            })?;
        Ok(Http {
            client,
            base,
            api_key: api_key.filter(|k| !k.is_empty()),
            name,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn with_auth(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    /// Sends a request and returns the response when its status is 2xx.
    async fn send(&self, builder: reqwest::RequestBuilder) -> Result<reqwest::Response, LlmError> {
        let response = self
            .with_auth(builder)
            .send()
            .await
            .map_err(|err| self.transport_error(&err))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(self.status_error(response).await)
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, LlmError> {
        let url = self.url(path);
        let mut response = self.send(self.client.get(&url)).await?;
        let body = self.read_body(&mut response, MAX_REPLY_BYTES).await?;
        serde_json::from_slice(&body).map_err(|err| {
            LlmError::permanent(format!(
                "{}: cannot parse the reply of GET {url}: {err}: {}",
                self.name,
                clip(&String::from_utf8_lossy(&body))
            ))
        })
    }

    /// The next chunk of a streamed body; `None` at its end.
    async fn next_chunk(
        &self,
        response: &mut reqwest::Response,
    ) -> Result<Option<bytes::Bytes>, LlmError> {
        read_chunk(self.name, response).await
    }

    /// Reads a body up to `limit` bytes.
    async fn read_body(
        &self,
        response: &mut reqwest::Response,
        limit: usize,
    ) -> Result<Vec<u8>, LlmError> {
        let mut body = Vec::new();
        while let Some(chunk) = self.next_chunk(response).await? {
            if body.len() + chunk.len() > limit {
                return Err(LlmError::permanent(format!(
                    "{}: reply longer than {limit} bytes",
                    self.name
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// A request that got no HTTP answer: down, unreachable, timed out.
    fn transport_error(&self, err: &reqwest::Error) -> LlmError {
        if err.is_builder() {
            return LlmError::permanent(format!("{}: {}", self.name, chain(err)));
        }
        let message = if err.is_connect() {
            format!(
                "{}: cannot connect to {}: {}",
                self.name,
                self.base,
                root_cause(err)
            )
        } else if err.is_timeout() {
            format!("{}: timed out: {}", self.name, chain(err))
        } else {
            format!("{}: {}", self.name, chain(err))
        };
        LlmError::retryable(message)
    }

    /// A non-2xx answer, with the server's own error message when the body
    /// has one.
    async fn status_error(&self, mut response: reqwest::Response) -> LlmError {
        let status = response.status();
        let mut body = Vec::new();
        // A body cut or too long still leaves the status to report.
        while let Ok(Some(chunk)) = response.chunk().await {
            let room = MAX_ERROR_BODY_BYTES.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if room <= chunk.len() {
                break;
            }
        }
        let detail = error_text(&String::from_utf8_lossy(&body));
        let message = match detail {
            Some(detail) => format!("{}: {status}: {detail}", self.name),
            None => format!("{}: {status}", self.name),
        };
        LlmError {
            retryable: status_is_retryable(status),
            message,
        }
    }
}

/// The next chunk of a streamed body from backend `name`; `None` at its end.
async fn read_chunk(
    name: &str,
    response: &mut reqwest::Response,
) -> Result<Option<bytes::Bytes>, LlmError> {
    response.chunk().await.map_err(|err| {
        if err.is_timeout() {
            LlmError::retryable(format!("{name}: timed out reading the reply"))
        } else {
            LlmError::retryable(format!("{name}: stream cut: {}", chain(&err)))
        }
    })
}

/// Overload and server faults pass; the request itself is fine.
fn status_is_retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// The message of an error document in any of the shapes servers use:
/// Ollama `{"error":"..."}`, OpenAI `{"error":{"message":...}}`, older vLLM
/// `{"object":"error","message":...}`, FastAPI `{"detail":...}`; else the
/// body text itself.
pub(crate) fn error_text(body: &str) -> Option<String> {
    let body = body.trim();
    if body.is_empty() {
        return None;
    }
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(body)
        && let Some(message) = json_error_message(&value)
    {
        return Some(clip(&message));
    }
    Some(clip(body))
}

/// The message inside a JSON error document, if it is one.
pub(crate) fn json_error_message(value: &serde_json::Value) -> Option<String> {
    match value.get("error") {
        Some(serde_json::Value::String(message)) => return Some(message.clone()),
        Some(serde_json::Value::Object(error)) => {
            if let Some(message) = error.get("message").and_then(|m| m.as_str()) {
                return Some(message.to_owned());
            }
            return Some(serde_json::Value::Object(error.clone()).to_string());
        }
        _ => {}
    }
    if let Some(message) = value.get("message").and_then(|m| m.as_str()) {
        return Some(message.to_owned());
    }
    match value.get("detail") {
        Some(serde_json::Value::String(detail)) => Some(detail.clone()),
        Some(detail) if !detail.is_null() => Some(detail.to_string()),
        _ => None,
    }
}

/// Cuts a server's text to a readable length.
pub(crate) fn clip(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// An error and its causes, `: `-joined (reqwest's own text is terse).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The innermost cause of an error ("Connection refused (os error 111)").
fn root_cause(err: &dyn std::error::Error) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Whole milliseconds in a duration, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Words separated by whitespace: the sim's token count.
pub(crate) fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_kind_round_trips_and_names_choices_on_error() {
        for kind in BackendKind::ALL {
            assert_eq!(kind.as_str().parse::<BackendKind>(), Ok(kind));
        }
        let err = "vllm".parse::<BackendKind>().expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "unknown llm backend \"vllm\": expected one of ollama, openai, sim"
        );
    }

    #[test]
    fn error_text_understands_every_shape() {
        assert_eq!(
            error_text(r#"{"error":"model \"x\" not found, try pulling it first"}"#).as_deref(),
            Some("model \"x\" not found, try pulling it first")
        );
        assert_eq!(
            error_text(r#"{"error":{"message":"bad key","type":"invalid_request_error","code":"invalid_api_key"}}"#)
                .as_deref(),
            Some("bad key")
        );
        assert_eq!(
            error_text(
                r#"{"object":"error","message":"too long","type":"BadRequestError","code":400}"#
            )
            .as_deref(),
            Some("too long")
        );
        assert_eq!(
            error_text(r#"{"detail":"Not Found"}"#).as_deref(),
            Some("Not Found")
        );
        assert_eq!(error_text("  plain text\n").as_deref(), Some("plain text"));
        assert_eq!(error_text(" \n"), None);
    }

    #[test]
    fn clip_cuts_long_text_on_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE_CHARS + 10);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(clipped.ends_with('…'));
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn retryable_statuses() {
        assert!(status_is_retryable(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(status_is_retryable(StatusCode::SERVICE_UNAVAILABLE));
        assert!(status_is_retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(!status_is_retryable(StatusCode::BAD_REQUEST));
        assert!(!status_is_retryable(StatusCode::UNAUTHORIZED));
        assert!(!status_is_retryable(StatusCode::NOT_FOUND));
    }

    #[test]
    fn config_debug_hides_the_api_key() {
        let config = LlmConfig {
            kind: BackendKind::OpenAi,
            endpoint: None,
            api_key: Some("sk-secret".into()),
            default_model: None,
            sim_latency: Duration::ZERO,
            request_timeout: None,
        };
        let text = format!("{config:?}");
        assert!(!text.contains("sk-secret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}
