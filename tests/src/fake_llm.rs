//! A fake LLM server for tests: speaks Ollama's native API and the OpenAI
//! chat-completions API (streaming included) over plain HTTP, with knobs for
//! latency, token rate, errors, hangs and cut streams.
//!
//! Endpoints: `/api/generate`, `/api/chat`, `/api/tags`, `/api/ps`,
//! `/api/version`, `/v1/chat/completions`, `/v1/models`; and for control
//! from other processes `GET|POST /_fake/behavior` and `GET /_fake/stats`.
//!
//! The reply text is deterministic: [`reply_text`] of the prompt (or of the
//! last message's content) with [`FakeBehavior::response_tokens`] tokens,
//! fewer when the request caps them (`num_predict`, `max_tokens`). The
//! prompt token count is the number of whitespace-separated words of all the
//! input (system, prompt, every message).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The models served unless told otherwise.
pub const DEFAULT_MODELS: [&str; 2] = ["qwen2.5:0.5b", "llama3.2:1b"];

/// Tokens in a reply unless told otherwise.
pub const DEFAULT_RESPONSE_TOKENS: u32 = 8;

/// The `load_duration` every Ollama reply reports, in nanoseconds (2.5 ms).
pub const LOAD_DURATION_NS: u64 = 2_500_000;

/// How often [`FakeLlm::wait_idle`] looks at the in-flight count.
const IDLE_POLL: Duration = Duration::from_millis(5);

/// Before aborting a cut stream, wait this long so the chunks before the
/// cut reach the client.
const CUT_FLUSH_PAUSE: Duration = Duration::from_millis(20);

/// Ollama keeps a model loaded this long after its last use (`expires_at`).
const KEEP_ALIVE: Duration = Duration::from_secs(300);

/// The words replies are made of.
const VOCAB: [&str; 24] = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "kobo",
    "runs",
    "jobs",
    "on",
    "many",
    "small",
    "nodes",
    "while",
    "tokens",
    "stream",
    "back",
    "to",
    "a",
    "busy",
    "coordinator",
    "today",
];

/// What the fake does; change it at runtime with [`FakeLlm::set_behavior`]
/// or `POST /_fake/behavior`. All knobs but `models` apply to the generation
/// endpoints only (`/api/generate`, `/api/chat`, `/v1/chat/completions`).
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
        }
    }
}

/// An error the generation endpoints answer with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FakeFailure {
    /// The HTTP status (ignored by [`ErrorShape::Midstream`], which answers
    /// 200; OpenAI mid-stream errors carry it as their `code`).
    pub status: u16,
    pub shape: ErrorShape,
    /// The error message; a stock one for the status when absent.
    pub message: Option<String>,
    /// Fail only this many generation requests after the behavior is set,
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
    /// Fails every generation request with `status` in the default shape.
    pub fn status(status: u16) -> Self {
        FakeFailure {
            status,
            ..FakeFailure::default()
        }
    }

    fn text(&self) -> String {
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

/// A running fake; dropping it (or [`FakeLlm::shutdown`]) stops it.
#[derive(Debug)]
pub struct FakeLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<io::Result<()>>>,
}

#[derive(Debug)]
struct Shared {
    control: Mutex<Control>,
    requests: AtomicU64,
    in_flight: AtomicU64,
    next_id: AtomicU64,
    /// Woken on every behavior change, for requests under `hold`.
    behavior_changed: Notify,
    shutdown: CancellationToken,
}

#[derive(Debug, Default)]
struct Control {
    behavior: FakeBehavior,
    /// Failures left under `first_n`.
    failures_left: Option<u64>,
    per_path: BTreeMap<String, u64>,
    last_body: BTreeMap<String, Value>,
    /// Models that answered a request (Ollama's `/api/ps`).
    loaded: BTreeSet<String>,
}

impl Shared {
    fn control(&self) -> MutexGuard<'_, Control> {
        // A panic while holding the lock leaves plain data, still usable.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts a fake on `127.0.0.1` on a free port.
pub async fn start(behavior: FakeBehavior) -> io::Result<FakeLlm> {
    start_on(SocketAddr::from(([127, 0, 0, 1], 0)), behavior).await
}

/// Starts a fake on `addr`.
pub async fn start_on(addr: SocketAddr, behavior: FakeBehavior) -> io::Result<FakeLlm> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        control: Mutex::new(Control::default()),
        requests: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        next_id: AtomicU64::new(1),
        behavior_changed: Notify::new(),
        shutdown: CancellationToken::new(),
    });
    set_behavior(&shared, behavior);
    let app = router(shared.clone());
    let token = shared.shutdown.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(token.cancelled_owned())
            .await
    });
    Ok(FakeLlm {
        addr,
        shared,
        task: Some(task),
    })
}

impl FakeLlm {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the behavior (and restarts the `first_n` failure count).
    pub fn set_behavior(&self, behavior: FakeBehavior) {
        set_behavior(&self.shared, behavior);
    }

    /// Changes part of the behavior.
    pub fn update_behavior(&self, change: impl FnOnce(&mut FakeBehavior)) {
        let mut behavior = self.behavior();
        change(&mut behavior);
        self.set_behavior(behavior);
    }

    pub fn behavior(&self) -> FakeBehavior {
        self.shared.control().behavior.clone()
    }

    /// Requests received, control endpoints aside.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests received on one path, e.g. `/api/generate`.
    pub fn requests_to(&self, path: &str) -> u64 {
        self.shared
            .control()
            .per_path
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn requests_by_path(&self) -> BTreeMap<String, u64> {
        self.shared.control().per_path.clone()
    }

    /// Requests being answered now: from arrival until the reply body ends
    /// or the client goes away.
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The last JSON body received on a path.
    pub fn last_body(&self, path: &str) -> Option<Value> {
        self.shared.control().last_body.get(path).cloned()
    }

    /// Waits until no request is in flight; false if `timeout` passed first.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.in_flight() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(IDLE_POLL).await;
        }
        true
    }

    /// Stops accepting, ends hanging and streaming replies, and waits for
    /// the server to finish.
    pub async fn shutdown(mut self) -> io::Result<()> {
        self.shared.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

fn set_behavior(shared: &Shared, behavior: FakeBehavior) {
    let mut control = shared.control();
    control.failures_left = behavior.fail.as_ref().and_then(|f| f.first_n);
    control.behavior = behavior;
    drop(control);
    shared.behavior_changed.notify_waiters();
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(|| async { "Ollama is running" }))
        .route(
            "/api/version",
            get(|| async { axum::Json(json!({"version": "0.0.0-fake"})) }),
        )
        .route("/api/tags", get(ollama_tags))
        .route("/api/ps", get(ollama_ps))
        .route("/api/generate", post(ollama_generate))
        .route("/api/chat", post(ollama_chat))
        .route("/v1/models", get(openai_models))
        .route("/v1/chat/completions", post(openai_completions))
        .route("/_fake/behavior", get(get_behavior).post(post_behavior))
        .route("/_fake/stats", get(stats))
        .layer(middleware::from_fn_with_state(shared.clone(), track))
        .with_state(shared)
}

/// Counts a request and keeps it in flight until its reply body is done
/// or dropped (the client went away).
async fn track(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if path.starts_with("/_fake/") {
        return next.run(request).await;
    }
    shared.requests.fetch_add(1, Ordering::SeqCst);
    *shared.control().per_path.entry(path).or_insert(0) += 1;
    let guard = InFlight::enter(shared.clone());
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |item| {
        let _still_in_flight = &guard;
        item
    });
    Response::from_parts(parts, Body::from_stream(body))
}

struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: Arc<Shared>) -> Self {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn get_behavior(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.control().behavior.clone()).into_response()
}

async fn post_behavior(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<FakeBehavior>(&body) {
        Ok(behavior) => {
            set_behavior(&shared, behavior.clone());
            axum::Json(behavior).into_response()
        }
        Err(err) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": format!("bad behavior: {err}")})),
        )
            .into_response(),
    }
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let per_path = shared.control().per_path.clone();
    axum::Json(json!({
        "requests": shared.requests.load(Ordering::SeqCst),
        "in_flight": shared.in_flight.load(Ordering::SeqCst),
        "per_path": per_path,
    }))
    .into_response()
}

// ---------------------------------------------------------------- Ollama

async fn ollama_tags(State(shared): State<Arc<Shared>>) -> Response {
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

async fn ollama_ps(State(shared): State<Arc<Shared>>) -> Response {
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

fn model_details(name: &str) -> Value {
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

fn model_size(name: &str) -> u64 {
    300_000_000 + fnv1a(name.as_bytes()) % 1_000_000_000
}

fn digest(name: &str) -> String {
    (0..4u8)
        .map(|i| format!("{:016x}", fnv1a(format!("{i}{name}").as_bytes())))
        .collect()
}

fn ollama_error(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({"error": message}))
}

/// What a generation request asks for, whatever its API.
#[derive(Debug)]
struct Ask {
    model: String,
    stream: bool,
    /// The reply is derived from this.
    input: String,
    prompt_tokens: u64,
    /// The request's own token cap, if any.
    cap: Option<u32>,
    include_usage: bool,
}

impl Ask {
    fn tokens(&self, behavior: &FakeBehavior) -> (Vec<String>, bool) {
        let wanted = behavior.response_tokens;
        let n = self.cap.map_or(wanted, |cap| cap.min(wanted));
        (reply_tokens(&self.input, n), n < wanted)
    }
}

/// The parts of a request every generation endpoint reads.
fn ask_from(value: &Value, chat: bool, default_stream: bool) -> Ask {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut all = Vec::new();
    if let Some(system) = value.get("system").and_then(Value::as_str) {
        all.push(system.to_owned());
    }
    let input = if chat {
        let messages = value
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        all.extend(messages.iter().map(|m| text(&m["content"])));
        messages
            .last()
            .map(|m| text(&m["content"]))
            .unwrap_or_default()
    } else {
        let prompt = text(&value["prompt"]);
        all.push(prompt.clone());
        prompt
    };
    let cap_of = |v: Option<&Value>| {
        v.and_then(Value::as_i64)
            .filter(|n| *n >= 0)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    let cap = cap_of(value.pointer("/options/num_predict"))
        .or_else(|| cap_of(value.get("max_tokens")))
        .or_else(|| cap_of(value.get("max_completion_tokens")));
    Ask {
        model: text(&value["model"]),
        stream: value
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(default_stream),
        prompt_tokens: all
            .iter()
            .map(|t| t.split_whitespace().count() as u64)
            .sum(),
        input,
        cap,
        include_usage: value
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OllamaGenerate,
    OllamaChat,
    OpenAi,
}

async fn ollama_generate(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    generation(shared, Api::OllamaGenerate, "/api/generate", body).await
}

async fn ollama_chat(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    generation(shared, Api::OllamaChat, "/api/chat", body).await
}

async fn openai_completions(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    generation(shared, Api::OpenAi, "/v1/chat/completions", body).await
}

/// Every generation endpoint: parse, apply the knobs, answer.
async fn generation(shared: Arc<Shared>, api: Api, path: &str, body: Bytes) -> Response {
    let started = Instant::now();
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value @ Value::Object(_)) => value,
        Ok(_) => return bad_request(api, "the body is not a JSON object"),
        Err(err) => return bad_request(api, &format!("invalid JSON body: {err}")),
    };
    let mut behavior = {
        let mut control = shared.control();
        control.last_body.insert(path.to_owned(), value.clone());
        control.behavior.clone()
    };
    while behavior.hold {
        let changed = shared.behavior_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        behavior = shared.control().behavior.clone();
        if !behavior.hold {
            break;
        }
        tokio::select! {
            () = changed => {}
            () = shared.shutdown.cancelled() => return shutting_down(),
        }
    }
    let ask = ask_from(&value, api != Api::OllamaGenerate, api != Api::OpenAi);

    if behavior.latency_ms > 0 {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(behavior.latency_ms)) => {}
            () = shared.shutdown.cancelled() => return shutting_down(),
        }
    }
    if behavior.hang {
        // Dropped with the connection when the client goes away.
        shared.shutdown.cancelled().await;
        return shutting_down();
    }
    if ask.model.is_empty() {
        return bad_request(api, "model is required");
    }
    if !behavior.models.contains(&ask.model) {
        return model_not_found(api, &ask.model);
    }
    let failure = take_failure(&shared, &behavior);
    if let Some(failure) = &failure
        && (failure.shape != ErrorShape::Midstream || !ask.stream)
    {
        return failure_response(api, failure);
    }
    // Only a mid-stream failure is left: it answers 200 and fails later.
    let midstream = failure.as_ref();
    shared.control().loaded.insert(ask.model.clone());
    let (tokens, capped) = ask.tokens(&behavior);
    let reply = Reply {
        id: shared.next_id.fetch_add(1, Ordering::SeqCst),
        api,
        model: ask.model,
        prompt_tokens: ask.prompt_tokens,
        include_usage: ask.include_usage,
        tokens,
        capped,
        started,
    };
    if !ask.stream {
        let value = match api {
            Api::OllamaGenerate | Api::OllamaChat => reply.ollama_final(true),
            Api::OpenAi => reply.openai_whole(),
        };
        return json_response(StatusCode::OK, value);
    }
    let content_type = match api {
        Api::OllamaGenerate | Api::OllamaChat => "application/x-ndjson",
        Api::OpenAi => "text/event-stream",
    };
    let frames = reply.frames(midstream);
    let mut response = Response::new(stream_body(&shared, reply, frames, &behavior));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    if api == Api::OpenAi {
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-cache"),
        );
    }
    response
}

/// Whether this request fails: always without `first_n`, else while the
/// count lasts.
fn take_failure(shared: &Shared, behavior: &FakeBehavior) -> Option<FakeFailure> {
    let failure = behavior.fail.clone()?;
    let mut control = shared.control();
    let fails = match &mut control.failures_left {
        None => failure.first_n.is_none(),
        Some(0) => false,
        Some(left) => {
            *left -= 1;
            true
        }
    };
    fails.then_some(failure)
}

fn shutting_down() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
}

fn bad_request(api: Api, message: &str) -> Response {
    match api {
        Api::OllamaGenerate | Api::OllamaChat => ollama_error(StatusCode::BAD_REQUEST, message),
        Api::OpenAi => json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}}),
        ),
    }
}

fn model_not_found(api: Api, model: &str) -> Response {
    match api {
        Api::OllamaGenerate | Api::OllamaChat => ollama_error(
            StatusCode::NOT_FOUND,
            &format!("model \"{model}\" not found, try pulling it first"),
        ),
        Api::OpenAi => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": {
                "message": format!("The model `{model}` does not exist or you do not have access to it."),
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }}),
        ),
    }
}

fn failure_response(api: Api, failure: &FakeFailure) -> Response {
    let status = StatusCode::from_u16(failure.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = failure.text();
    match (api, failure.shape) {
        (Api::OllamaGenerate | Api::OllamaChat, _) => ollama_error(status, &message),
        (Api::OpenAi, ErrorShape::Vllm) => json_response(status, vllm_error(status, &message)),
        (Api::OpenAi, _) => json_response(status, openai_error(status, &message)),
    }
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

/// One reply being built; streamed frames are rendered when sent, so their
/// timestamps and durations are true.
struct Reply {
    id: u64,
    api: Api,
    model: String,
    prompt_tokens: u64,
    include_usage: bool,
    tokens: Vec<String>,
    capped: bool,
    started: Instant,
}

/// One chunk of a streamed reply, rendered by [`Reply::render`].
#[derive(Debug)]
enum Frame {
    /// An Ollama line, or an OpenAI content chunk.
    Piece(String),
    /// Ollama's `done` line, or OpenAI's `finish_reason` chunk.
    Finish,
    /// OpenAI's `choices: []` chunk with the usage.
    Usage,
    /// OpenAI's opening chunk with the assistant role.
    Role,
    Error(String, StatusCode),
    /// OpenAI's `[DONE]`.
    Done,
}

impl Reply {
    fn text(&self) -> String {
        self.tokens.concat()
    }

    fn reason(&self) -> &'static str {
        if self.capped { "length" } else { "stop" }
    }

    fn completion_tokens(&self) -> u64 {
        self.tokens.len() as u64
    }

    /// What a stream sends, in order.
    fn frames(&self, error: Option<&FakeFailure>) -> Vec<Frame> {
        let ollama = self.api != Api::OpenAi;
        let mut frames = Vec::new();
        if !ollama {
            frames.push(Frame::Role);
        }
        if let Some(failure) = error {
            if ollama {
                frames.extend(self.tokens.first().cloned().map(Frame::Piece));
            }
            let status =
                StatusCode::from_u16(failure.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            frames.push(Frame::Error(failure.text(), status));
            if !ollama {
                // vLLM ends an errored stream properly.
                frames.push(Frame::Done);
            }
            return frames;
        }
        frames.extend(self.tokens.iter().cloned().map(Frame::Piece));
        frames.push(Frame::Finish);
        if !ollama {
            if self.include_usage {
                frames.push(Frame::Usage);
            }
            frames.push(Frame::Done);
        }
        frames
    }

    fn render(&self, frame: &Frame) -> Bytes {
        let value = match (self.api, frame) {
            (_, Frame::Done) => return Bytes::from_static(b"data: [DONE]\n\n"),
            (Api::OpenAi, Frame::Role) => {
                self.openai_chunk(json!({"role": "assistant", "content": ""}), None)
            }
            (Api::OpenAi, Frame::Piece(piece)) => {
                self.openai_chunk(json!({"content": piece}), None)
            }
            (Api::OpenAi, Frame::Finish) => self.openai_chunk(json!({}), Some(self.reason())),
            (Api::OpenAi, Frame::Usage) => {
                let mut usage = self.openai_chunk(json!({}), None);
                usage["choices"] = json!([]);
                usage["usage"] = self.openai_usage();
                usage
            }
            (Api::OpenAi, Frame::Error(message, status)) => json!({"error": {
                "message": message,
                "type": vllm_type(*status),
                "param": null,
                "code": status.as_u16(),
            }}),
            (_, Frame::Piece(piece)) => self.ollama_piece(piece),
            (_, Frame::Finish | Frame::Usage | Frame::Role) => self.ollama_final(false),
            (_, Frame::Error(message, _)) => json!({"error": message}),
        };
        if self.api == Api::OpenAi {
            Bytes::from(format!("data: {value}\n\n"))
        } else {
            Bytes::from(format!("{value}\n"))
        }
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

    /// The last Ollama line (or the whole non-streamed reply).
    fn ollama_final(&self, whole: bool) -> Value {
        let text = if whole { self.text() } else { String::new() };
        let mut line = self.ollama_piece(&text);
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

    fn openai_id(&self) -> String {
        format!(
            "chatcmpl-{:024x}",
            u128::from(self.id) * 0x9e37_79b9_7f4a_7c15
        )
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

    fn openai_whole(&self) -> Value {
        json!({
            "id": self.openai_id(),
            "object": "chat.completion",
            "created": unix_seconds(),
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.text(), "refusal": null},
                "logprobs": null,
                "finish_reason": self.reason(),
            }],
            "usage": self.openai_usage(),
        })
    }
}

/// The frames, paced by the token rate and cut per the behavior; ends
/// (aborting the connection) when the fake shuts down.
fn stream_body(shared: &Shared, reply: Reply, frames: Vec<Frame>, behavior: &FakeBehavior) -> Body {
    struct Pace {
        reply: Reply,
        frames: VecDeque<Frame>,
        sent: u32,
        gap: Option<Duration>,
        cut: Option<(u32, bool)>,
        shutdown: CancellationToken,
        over: bool,
    }
    let gap = (behavior.tokens_per_second > 0.0 && behavior.tokens_per_second.is_finite())
        .then(|| Duration::from_secs_f64(1.0 / behavior.tokens_per_second));
    let pace = Pace {
        reply,
        frames: frames.into(),
        sent: 0,
        gap,
        cut: behavior.cut_after_chunks.map(|n| (n, behavior.cut_clean)),
        shutdown: shared.shutdown.clone(),
        over: false,
    };
    let stream = futures_util::stream::unfold(pace, |mut pace| async move {
        if pace.over {
            return None;
        }
        let cut_error = || io::Error::new(io::ErrorKind::ConnectionAborted, "fake: stream cut");
        if let Some((n, clean)) = pace.cut
            && pace.sent >= n
        {
            pace.over = true;
            if clean {
                return None;
            }
            // A pause lets the server flush what came before the cut, so
            // the client sees the first chunks and then a broken body.
            tokio::time::sleep(CUT_FLUSH_PAUSE).await;
            return Some((Err(cut_error()), pace));
        }
        let frame = pace.frames.pop_front()?;
        if let Some(gap) = pace.gap
            && pace.sent > 0
        {
            tokio::select! {
                () = tokio::time::sleep(gap) => {}
                () = pace.shutdown.cancelled() => {
                    pace.over = true;
                    return Some((Err(cut_error()), pace));
                }
            }
        }
        pace.sent += 1;
        let bytes = pace.reply.render(&frame);
        Some((Ok::<_, io::Error>(bytes), pace))
    });
    Body::from_stream(stream)
}

// ---------------------------------------------------------------- OpenAI

async fn openai_models(State(shared): State<Arc<Shared>>) -> Response {
    let models = shared.control().behavior.models.clone();
    let created = unix_seconds();
    let data: Vec<Value> = models
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": "library"}))
        .collect();
    json_response(StatusCode::OK, json!({"object": "list", "data": data}))
}

// ---------------------------------------------------------------- helpers

fn json_response(status: StatusCode, value: Value) -> Response {
    (status, axum::Json(value)).into_response()
}

/// The tokens of a reply to `input` (the prompt, or the last message's
/// content): `count` words from a fixed vocabulary, chosen by a hash of the
/// input, each but the first with a leading space.
pub fn reply_tokens(input: &str, count: u32) -> Vec<String> {
    let mut state = fnv1a(input.as_bytes());
    (0..count)
        .map(|i| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let word = VOCAB[usize::try_from(state >> 33).unwrap_or(0) % VOCAB.len()];
            if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            }
        })
        .collect()
}

/// The whole reply text to `input` with `count` tokens.
pub fn reply_text(input: &str, count: u32) -> String {
    reply_tokens(input, count).concat()
}

/// FNV-1a, 64 bits: stable across runs and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2024-05-01T12:34:56.123456789Z`.
fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_nanos(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap_day = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap_day), "2000-02-29T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000000005Z");
    }

    #[test]
    fn replies_are_deterministic_and_sized() {
        assert_eq!(reply_text("hello", 8), reply_text("hello", 8));
        assert_ne!(reply_text("hello", 8), reply_text("goodbye", 8));
        assert_eq!(reply_tokens("hello", 5).len(), 5);
        assert_eq!(reply_text("hello", 8).split_whitespace().count(), 8);
        assert_eq!(reply_text("x", 0), "");
    }

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
