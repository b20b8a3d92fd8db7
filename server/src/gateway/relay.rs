//! One gateway request, start to end: check it, submit it as a job, wait in
//! the queue for an agent's answer, and relay that answer — whole, or as the
//! stream the backend produces (SSE for OpenAI, NDJSON for Ollama).
//!
//! A failure before the first byte reached the client is retried on another
//! node by the queue and invisible here. A stream cut after bytes were sent
//! goes on from there on another node when the call allows it (the queue's
//! relay hands the next attempt the text so far, see
//! `kobo_queue::streams`); else it ends with the API's own error event,
//! never a clean end. A client that goes away cancels its job, which ends
//! the agent's upload and its LLM call.

use std::pin::Pin;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use kobo_protocol::{GatewayApi, JobId, JobState, JobView};
use kobo_queue::access::Caller;
use kobo_queue::streams::{Frame, Listener};
use kobo_queue::{Queue, StoreError};
use tokio::time::Instant;

use super::errors::{Dialect, GatewayError};
use super::{fields, hints, models};
use crate::api::AppState;
use crate::api::jobs::{Place, place_in_queue};

/// Longest one wait of the job's state lasts before it is asked again.
const WAIT_SLICE: Duration = Duration::from_secs(60);

fn dialect(api: GatewayApi) -> Dialect {
    if api.is_ollama() {
        Dialect::Ollama
    } else {
        Dialect::OpenAi
    }
}

/// Cancels the job when the request ends before its answer did (the client
/// went away), and ends any upload of it.
struct JobGuard {
    queue: Queue,
    caller: Caller,
    job_id: JobId,
    armed: bool,
}

impl JobGuard {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.queue.streams().abandon(self.job_id);
        let (queue, caller, job_id) = (self.queue.clone(), self.caller.clone(), self.job_id);
        tokio::spawn(async move {
            match queue.cancel(&caller, job_id).await {
                Ok(_) => tracing::info!(job_id, "gateway client went away; job cancelled"),
                Err(err) => {
                    tracing::debug!(job_id, error = %err, "cancelling an abandoned gateway job")
                }
            }
        });
    }
}

/// What the request learned while waiting.
enum Wait {
    Frame(Frame),
    Finished(Box<JobView>),
    TooLong,
    /// The relay's sending side is gone (it never is while the job's entry
    /// lives).
    Closed,
}

/// The next thing that happens to the job: a frame of its relay, its end,
/// or the queue bound passing before any agent started.
async fn next(
    queue: &Queue,
    caller: &Caller,
    job_id: JobId,
    listener: &mut Listener,
    start_by: Option<Instant>,
) -> Result<Wait, GatewayError> {
    let far = Instant::now() + Duration::from_secs(24 * 3600);
    loop {
        tokio::select! {
            biased;
            frame = listener.receiver.recv() => {
                return Ok(match frame {
                    Some(frame) => Wait::Frame(frame),
                    None => Wait::Closed,
                });
            }
            job = queue.wait(caller, job_id, WAIT_SLICE) => {
                let job = job.map_err(|err| {
                    tracing::error!(job_id, error = %err, "waiting for a gateway job");
                    GatewayError::new(Dialect::OpenAi, StatusCode::INTERNAL_SERVER_ERROR, "internal error")
                })?;
                if job.state.is_terminal() {
                    return Ok(Wait::Finished(Box::new(job)));
                }
            }
            () = tokio::time::sleep_until(start_by.unwrap_or(far)), if start_by.is_some() => {
                return Ok(Wait::TooLong);
            }
        }
    }
}

/// Longest `Retry-After` kobo suggests, in seconds.
const MAX_RETRY_AFTER_SECS: u64 = 300;

/// When a refused request may find a free node: the jobs of its kind queued
/// ahead of it over the rate jobs finish at now (`Queue::finish_rate`);
/// the queue wait bound when nothing finished lately.
async fn retry_after(state: &AppState, kind: &str) -> u64 {
    let fallback = state.gateway.max_queue_wait.as_secs().max(1);
    let Some(per_sec) = state.queue.finish_rate() else {
        return fallback;
    };
    let Ok(status) = state.observe.status().await else {
        return fallback;
    };
    let queued: u64 = status
        .queue
        .iter()
        .filter(|row| row.state == JobState::Queued && row.kind == kind)
        .map(|row| row.jobs)
        .sum();
    ((queued.max(1) as f64 / per_sec).ceil() as u64).clamp(1, MAX_RETRY_AFTER_SECS)
}

/// The error a job that ended without an answer gives its client.
fn ended_without_answer(dialect: Dialect, job: &JobView) -> GatewayError {
    match job.state {
        JobState::Cancelled => GatewayError::new(
            dialect,
            StatusCode::SERVICE_UNAVAILABLE,
            "the request was cancelled",
        ),
        _ => GatewayError::new(
            dialect,
            StatusCode::BAD_GATEWAY,
            format!(
                "the model failed: {}",
                job.last_error.as_deref().unwrap_or("no node could answer")
            ),
        ),
    }
}

/// What the answer's headers say of the request's job: its id, the node
/// that answered, and, when it had to wait, its place in the queue and the
/// start expected when it was submitted.
struct Told<'a> {
    job_id: JobId,
    node: Option<&'a str>,
    place: Option<Place>,
}

fn with_kobo_headers(mut response: Response, told: Told<'_>) -> Response {
    let Told {
        job_id,
        node,
        place,
    } = told;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&job_id.to_string()) {
        headers.insert("x-kobo-job-id", value);
    }
    if let Some(place) = place {
        headers.insert("x-kobo-queue-position", HeaderValue::from(place.position));
        if let Some(at) = place.estimated_start_at {
            headers.insert("x-kobo-estimated-start", HeaderValue::from(at));
        }
    }
    if let Some(node) = node
        && let Ok(value) = HeaderValue::from_str(node)
    {
        headers.insert("x-kobo-node", value);
    }
    response
}

/// Handles one gateway request of `api`.
pub(crate) async fn handle(
    state: AppState,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
    api: GatewayApi,
) -> Response {
    match run(state, caller, headers, body, api).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn run(
    state: AppState,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
    api: GatewayApi,
) -> Result<Response, GatewayError> {
    let d = dialect(api);
    let checked = fields::check(api, &body)?;
    let nodes = state.queue.nodes().await.map_err(|err| {
        tracing::error!(error = %err, "reading nodes for a gateway request");
        GatewayError::new(d, StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    })?;
    if !models::is_served(&nodes, &checked.model, api.is_ollama()) {
        return Err(GatewayError::model_not_found(d, &checked.model));
    }
    let job = hints::job_of(
        &headers,
        &checked.model,
        &checked.call.body,
        &state.gateway,
        api,
    )?;
    let model = checked.model.clone();
    let kind = job.kind.clone();
    if state.queue.streams().len() >= state.gateway.max_requests {
        let mut err = GatewayError::new(
            d,
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} gateway requests are already in flight (the bound); retry later",
                state.gateway.max_requests
            ),
        );
        err.retry_after = Some(retry_after(&state, &kind).await);
        return Err(err);
    }
    let stream = checked.call.stream;
    let call = checked.call.clone();
    let submitted = state
        .queue
        .submit_gateway(&caller, job, checked.call)
        .await
        .map_err(|err| match err {
            StoreError::Limited(refusal) => GatewayError::limited(d, &refusal),
            err => {
                tracing::error!(error = %err, "submitting a gateway request");
                GatewayError::new(d, StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        })?;
    let job_id = submitted.id;
    let place = if submitted.state == JobState::Queued {
        place_in_queue(&state, job_id).await
    } else {
        None
    };
    let mut guard = JobGuard {
        queue: state.queue.clone(),
        caller: caller.clone(),
        job_id,
        armed: true,
    };
    let Some(mut listener) = state.queue.streams().listen(job_id, call) else {
        return Err(GatewayError::new(
            d,
            StatusCode::INTERNAL_SERVER_ERROR,
            "relay taken",
        ));
    };
    // The queue bound counts while the job waits for a node; once leased,
    // the answer takes as long as the model takes.
    let mut start_by = Some(Instant::now() + state.gateway.max_queue_wait);
    let mut node: Option<String> = None;
    let mut whole: Vec<u8> = Vec::new();
    loop {
        let bound = start_by.filter(|_| node.is_none());
        let waited = next(&state.queue, &caller, job_id, &mut listener, bound).await?;
        match waited {
            Wait::TooLong => {
                let queued = state
                    .queue
                    .get(&caller, job_id)
                    .await
                    .map(|job| matches!(job.state, JobState::Queued | JobState::Scheduled))
                    .unwrap_or(true);
                if !queued {
                    start_by = None;
                    continue;
                }
                let mut err = GatewayError::new(
                    d,
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "every node that may serve `{}` stayed busy for {} ms; retry later",
                        model,
                        state.gateway.max_queue_wait.as_millis()
                    ),
                );
                err.retry_after = Some(retry_after(&state, &kind).await);
                return Err(err);
            }
            Wait::Finished(job) if job.state == JobState::Succeeded => {
                // The upload ended before the completion; take what is left.
                while let Ok(frame) = listener.receiver.try_recv() {
                    if listener.admit(&frame)
                        && let Frame::Data { bytes, .. } = frame
                    {
                        whole.extend_from_slice(&bytes);
                    }
                }
                guard.disarm();
                return Ok(whole_answer(whole, told(job_id, &node, place), api, stream));
            }
            Wait::Finished(job) => {
                guard.disarm();
                return Err(ended_without_answer(d, &job));
            }
            Wait::Closed => {
                return Err(GatewayError::new(
                    d,
                    StatusCode::BAD_GATEWAY,
                    "the relay closed",
                ));
            }
            Wait::Frame(frame) if !listener.admit(&frame) => {
                tracing::debug!(job_id, "dropped a frame of a stale attempt");
            }
            Wait::Frame(Frame::Start { node_id, .. }) => {
                node = Some(node_id);
                whole.clear();
            }
            Wait::Frame(Frame::Broken {
                lease_token,
                reason,
            }) => {
                // Nothing reached the client yet: the job goes back to the
                // queue at once, and its next upload starts over.
                whole.clear();
                let detail = format!("{reason}; retried before its first byte reached the client");
                release(&state.queue, job_id, lease_token, detail).await;
            }
            Wait::Frame(Frame::End { .. }) => {
                guard.disarm();
                return Ok(whole_answer(whole, told(job_id, &node, place), api, stream));
            }
            Wait::Frame(Frame::Data { bytes, .. }) if stream => {
                let relay = Relay {
                    first: Some(bytes),
                    listener,
                    guard,
                    api,
                    queue: state.queue.clone(),
                    caller,
                    continue_within: state.gateway.max_queue_wait,
                    waiting: None,
                    done: false,
                };
                let told = told(job_id, &node, place);
                return Ok(with_kobo_headers(streamed(relay), told));
            }
            Wait::Frame(Frame::Data { bytes, .. }) => whole.extend_from_slice(&bytes),
        }
    }
}

/// Puts a job whose stream broke back in the queue at once (its lease is
/// of no use: the upload that served it is gone).
async fn release(queue: &Queue, job_id: JobId, lease_token: i64, detail: String) {
    if let Err(err) = queue
        .release_broken_stream(job_id, lease_token, detail)
        .await
    {
        tracing::error!(job_id, error = %err, "releasing the lease of a broken stream");
    }
}

fn told(job_id: JobId, node: &Option<String>, place: Option<Place>) -> Told<'_> {
    Told {
        job_id,
        node: node.as_deref(),
        place,
    }
}

fn whole_answer(bytes: Vec<u8>, told: Told<'_>, api: GatewayApi, stream: bool) -> Response {
    let content_type = if stream {
        api.stream_content_type()
    } else {
        "application/json"
    };
    let mut response = Response::new(Body::from(bytes));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    with_kobo_headers(response, told)
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// A streamed answer being relayed to its client.
struct Relay {
    first: Option<Bytes>,
    listener: Listener,
    guard: JobGuard,
    api: GatewayApi,
    queue: Queue,
    caller: Caller,
    /// How long a broken answer waits for a node to continue it.
    continue_within: Duration,
    /// Set while a broken answer waits for its next attempt: until when.
    waiting: Option<Instant>,
    done: bool,
}

impl Relay {
    /// Ends the stream with the API's error event; the job, which cannot
    /// reach this client any more, is cancelled when the relay drops.
    fn cut(&mut self, why: &str) -> Bytes {
        self.done = true;
        let err = GatewayError::new(
            dialect(self.api),
            StatusCode::BAD_GATEWAY,
            format!("the stream was cut: {why}"),
        );
        tracing::warn!(job_id = self.guard.job_id, %why, "gateway stream cut");
        Bytes::from(err.stream_event())
    }

    /// The next frame of the relay; while a broken answer waits for its
    /// next attempt, the job ending or the wait's bound passing first.
    async fn frame(&mut self) -> Result<Frame, Bytes> {
        let job_id = self.guard.job_id;
        loop {
            let Some(until) = self.waiting else {
                return match self.listener.receiver.recv().await {
                    Some(frame) => Ok(frame),
                    None => Err(self.cut("the relay closed")),
                };
            };
            tokio::select! {
                biased;
                frame = self.listener.receiver.recv() => {
                    return frame.ok_or_else(|| self.cut("the relay closed"));
                }
                job = self.queue.wait(&self.caller, job_id, WAIT_SLICE) => match job {
                    Ok(job) if job.state.is_terminal() => {
                        let why = format!(
                            "the job ended {} before a node continued it: {}",
                            job.state,
                            job.last_error.as_deref().unwrap_or("no error recorded")
                        );
                        return Err(self.cut(&why));
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::error!(job_id, error = %err, "waiting for a broken gateway job");
                        return Err(self.cut("internal error"));
                    }
                },
                () = tokio::time::sleep_until(until) => {
                    let why = format!(
                        "no node continued the answer within {} ms",
                        self.continue_within.as_millis()
                    );
                    return Err(self.cut(&why));
                }
            }
        }
    }

    /// The next bytes for the client; `None` at the answer's proper end.
    async fn next_bytes(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let job_id = self.guard.job_id;
        loop {
            let frame = match self.frame().await {
                Ok(frame) => frame,
                Err(event) => return Some(event),
            };
            if !self.listener.admit(&frame) {
                tracing::debug!(job_id, "dropped a frame of a stale attempt");
                continue;
            }
            match frame {
                Frame::Data { bytes, .. } => return Some(bytes),
                Frame::End { .. } => {
                    self.guard.disarm();
                    return None;
                }
                Frame::Broken {
                    lease_token,
                    reason,
                } => {
                    if let Err(why) = self.listener.continuable() {
                        return Some(self.cut(&format!("{reason}; it cannot be continued: {why}")));
                    }
                    let chars = self.listener.sent_chars();
                    tracing::warn!(job_id, %reason, chars, "gateway stream broke; continuing on another node");
                    let detail =
                        format!("{reason}; the stream goes on from its first {chars} characters");
                    release(&self.queue, job_id, lease_token, detail).await;
                    self.waiting = Some(Instant::now() + self.continue_within);
                }
                Frame::Start { node_id, .. } => {
                    // A new attempt: after a break, or after the lease of a
                    // silent one ran out.
                    if let Err(why) = self.listener.continuable() {
                        let why = format!("the answer restarted on {node_id}, and {why}");
                        return Some(self.cut(&why));
                    }
                    tracing::info!(job_id, %node_id, "gateway stream continues");
                    self.waiting = None;
                }
            }
        }
    }
}

/// The streamed answer: the first bytes, then every frame as it comes,
/// continued on another node after a break where the call allows it.
fn streamed(relay: Relay) -> Response {
    let api = relay.api;
    let body: ByteStream = Box::pin(futures_util::stream::unfold(
        relay,
        |mut relay| async move {
            let bytes = relay.next_bytes().await?;
            Some((Ok(bytes), relay))
        },
    ));
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(api.stream_content_type()),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
