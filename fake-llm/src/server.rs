//! The running server: [`start`], [`start_on`], the router, the request
//! counters ([`FakeLlm`]: received, in flight, aborted by the client) and
//! the `/_fake/` control endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::behavior::FakeBehavior;
use crate::{embed, ollama, openai, show};

/// How often [`FakeLlm::wait_idle`] looks at the in-flight count.
const IDLE_POLL: Duration = Duration::from_millis(5);

/// A running fake; dropping it (or [`FakeLlm::shutdown`]) stops it.
#[derive(Debug)]
pub struct FakeLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<io::Result<()>>>,
}

/// What the handlers share.
#[derive(Debug)]
pub(crate) struct Shared {
    control: Mutex<Control>,
    requests: AtomicU64,
    in_flight: AtomicU64,
    aborted: AtomicU64,
    /// Callers killed by the poison knob.
    pub(crate) poison_kills: AtomicU64,
    pub(crate) next_id: AtomicU64,
    pub(crate) reported: Arc<Reported>,
    /// Woken on every behavior change, for requests under `hold`.
    pub(crate) behavior_changed: Notify,
    pub(crate) shutdown: CancellationToken,
}

/// Tokens the fake reported in its answers' usage (OpenAI's `usage`,
/// Ollama's `prompt_eval_count` and `eval_count`), summed: what a
/// coordinator's usage accounting must add up to.
#[derive(Debug, Default)]
pub(crate) struct Reported {
    prompt: AtomicU64,
    completion: AtomicU64,
}

impl Reported {
    pub(crate) fn add(&self, prompt: u64, completion: u64) {
        self.prompt.fetch_add(prompt, Ordering::SeqCst);
        self.completion.fetch_add(completion, Ordering::SeqCst);
    }
}

/// The mutable state behind one lock.
#[derive(Debug, Default)]
pub(crate) struct Control {
    pub(crate) behavior: FakeBehavior,
    /// Failures left under `first_n`.
    pub(crate) failures_left: Option<u64>,
    per_path: BTreeMap<String, u64>,
    pub(crate) last_body: BTreeMap<String, Value>,
    /// Models that answered a request (Ollama's `/api/ps`).
    pub(crate) loaded: BTreeSet<String>,
}

impl Shared {
    pub(crate) fn control(&self) -> MutexGuard<'_, Control> {
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
        aborted: AtomicU64::new(0),
        poison_kills: AtomicU64::new(0),
        next_id: AtomicU64::new(1),
        reported: Arc::default(),
        behavior_changed: Notify::new(),
        shutdown: CancellationToken::new(),
    });
    set_behavior(&shared, behavior);
    let app = router(shared.clone());
    let token = shared.shutdown.clone();
    let task = tokio::spawn(async move {
        // As Ollama (Go's net/http) and llama.cpp do: streamed frames are
        // small writes, which Nagle's algorithm would hold back behind the
        // peer's delayed ACK.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
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

    /// Prompt tokens reported in every answer's usage so far (streamed
    /// answers count when their usage frame is sent).
    pub fn prompt_tokens_reported(&self) -> u64 {
        self.shared.reported.prompt.load(Ordering::SeqCst)
    }

    /// Completion tokens reported in every answer's usage so far.
    pub fn completion_tokens_reported(&self) -> u64 {
        self.shared.reported.completion.load(Ordering::SeqCst)
    }

    /// Callers killed by [`FakeBehavior::kill_caller_on`].
    pub fn poison_kills(&self) -> u64 {
        self.shared.poison_kills.load(Ordering::SeqCst)
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

    /// Requests whose client went away before the reply ended: while
    /// held, waiting out the latency or hanging, or mid-body (a stream
    /// the client stopped reading). Streams the fake cuts itself
    /// (`cut_after_chunks`, shutdown) do not count.
    pub fn aborted(&self) -> u64 {
        self.shared.aborted.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` requests were [aborted](Self::aborted)
    /// (a client's disconnect takes a moment to reach the server); false
    /// if `timeout` passed first.
    pub async fn wait_aborted(&self, count: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.aborted() < count {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(IDLE_POLL).await;
        }
        true
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
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/embed", post(embed::ollama_embed))
        .route("/api/embeddings", post(embed::ollama_embeddings))
        .route("/api/show", post(show::show))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{*id}", get(openai::model))
        .route("/v1/chat/completions", post(openai::completions))
        .route("/v1/completions", post(openai::legacy))
        .route("/v1/embeddings", post(embed::openai))
        .route("/_fake/behavior", get(get_behavior).post(post_behavior))
        .route("/_fake/stats", get(stats))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            crate::poison::kill_poisoned_callers,
        ))
        .layer(middleware::from_fn_with_state(shared.clone(), track))
        .with_state(shared)
}

/// Counts a request and keeps it in flight until its reply body is done
/// or dropped (the client went away: then it counts as aborted, as when
/// the handler itself is dropped before answering).
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
    let body = futures_util::stream::unfold(
        (body.into_data_stream(), guard),
        |(mut body, mut guard)| async move {
            let item = body.next().await;
            // The end, or an error the fake made (a cut, a shutdown): the
            // server ended the body, not the client.
            if !matches!(item, Some(Ok(_))) {
                guard.ended = true;
            }
            item.map(|item| (item, (body, guard)))
        },
    );
    Response::from_parts(parts, Body::from_stream(body))
}

struct InFlight {
    shared: Arc<Shared>,
    /// The reply body ended (as opposed to being dropped midway).
    ended: bool,
}

impl InFlight {
    fn enter(shared: Arc<Shared>) -> Self {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight {
            shared,
            ended: false,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.ended {
            self.shared.aborted.fetch_add(1, Ordering::SeqCst);
        }
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
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
        "aborted": shared.aborted.load(Ordering::SeqCst),
        "poison_kills": shared.poison_kills.load(Ordering::SeqCst),
        "prompt_tokens_reported": shared.reported.prompt.load(Ordering::SeqCst),
        "completion_tokens_reported": shared.reported.completion.load(Ordering::SeqCst),
        "per_path": per_path,
    }))
    .into_response()
}

/// A JSON body with a status.
pub(crate) fn json_response(status: StatusCode, value: Value) -> Response {
    (status, axum::Json(value)).into_response()
}
