//! One model request, whatever its API: [`admit`] applies the knobs (hold,
//! latency, hang, model check, failure) in that order to generation and
//! embedding requests alike; [`generation`] then answers a generation
//! request (`/api/generate`, `/api/chat`, `/v1/chat/completions`,
//! `/v1/completions`), whole or streamed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::ask::Ask;
use crate::behavior::{ErrorShape, FakeBehavior, FakeFailure};
use crate::reply::Reply;
use crate::server::{Shared, json_response};
use crate::stream::stream_body;
use crate::{ollama, openai};

/// Which API a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    OllamaGenerate,
    OllamaChat,
    /// `/api/embed` and `/api/embeddings`.
    OllamaEmbed,
    /// `/v1/chat/completions`.
    OpenAi,
    /// `/v1/completions`.
    OpenAiLegacy,
    /// `/v1/embeddings`.
    OpenAiEmbed,
}

impl Api {
    pub(crate) fn is_ollama(self) -> bool {
        matches!(
            self,
            Api::OllamaGenerate | Api::OllamaChat | Api::OllamaEmbed
        )
    }

    /// Takes `messages` (and may call tools), rather than a `prompt`.
    pub(crate) fn is_chat(self) -> bool {
        matches!(self, Api::OllamaChat | Api::OpenAi)
    }
}

/// A request the knobs let through.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) value: Value,
    pub(crate) model: String,
    pub(crate) behavior: FakeBehavior,
    /// A failure to answer with (a mid-stream one only fails streams).
    pub(crate) failure: Option<FakeFailure>,
    pub(crate) started: Instant,
}

/// Parses a model request and applies the knobs: hold, latency, hang,
/// model check, failure. `Err` is the answer already.
pub(crate) async fn admit(
    shared: &Shared,
    api: Api,
    path: &str,
    body: &Bytes,
) -> Result<Admitted, Response> {
    let started = Instant::now();
    let value: Value = match serde_json::from_slice(body) {
        Ok(value @ Value::Object(_)) => value,
        Ok(_) => return Err(bad_request(api, "the body is not a JSON object")),
        Err(err) => return Err(bad_request(api, &format!("invalid JSON body: {err}"))),
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
            () = shared.shutdown.cancelled() => return Err(shutting_down()),
        }
    }
    if behavior.latency_ms > 0 {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(behavior.latency_ms)) => {}
            () = shared.shutdown.cancelled() => return Err(shutting_down()),
        }
    }
    if behavior.hang {
        // Dropped with the connection when the client goes away.
        shared.shutdown.cancelled().await;
        return Err(shutting_down());
    }
    let model = value
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if model.is_empty() {
        return Err(bad_request(api, "model is required"));
    }
    if !behavior.models.contains(&model) {
        return Err(model_not_found(api, &model));
    }
    let failure = take_failure(shared, &behavior);
    Ok(Admitted {
        value,
        model,
        behavior,
        failure,
        started,
    })
}

/// Every generation endpoint: parse, apply the knobs, answer.
pub(crate) async fn generation(shared: Arc<Shared>, api: Api, path: &str, body: Bytes) -> Response {
    let admitted = match admit(&shared, api, path, &body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let ask = Ask::from_request(&admitted.value, api);
    let failure = admitted.failure;
    if let Some(failure) = &failure
        && (failure.shape != ErrorShape::Midstream || !ask.stream)
    {
        return failure_response(api, failure);
    }
    // Only a mid-stream failure is left: it answers 200 and fails later.
    let midstream = failure.as_ref();
    shared.control().loaded.insert(admitted.model.clone());
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let body = ask.body(&admitted.behavior, id);
    let reply = Reply {
        id,
        api,
        model: admitted.model,
        prompt_tokens: ask.prompt_tokens,
        include_usage: ask.include_usage,
        tokens: body.tokens,
        capped: body.capped,
        call: body.call,
        started: admitted.started,
    };
    if !ask.stream {
        shared
            .reported
            .add(reply.prompt_tokens, reply.completion_tokens());
        let value = if api.is_ollama() {
            reply.ollama_final(true)
        } else {
            reply.openai_whole()
        };
        return json_response(StatusCode::OK, value);
    }
    let content_type = if api.is_ollama() {
        "application/x-ndjson"
    } else {
        "text/event-stream"
    };
    let frames = reply.frames(midstream);
    let mut response = Response::new(stream_body(&shared, reply, frames, &admitted.behavior));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    if !api.is_ollama() {
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

pub(crate) fn bad_request(api: Api, message: &str) -> Response {
    if api.is_ollama() {
        ollama::error(StatusCode::BAD_REQUEST, message)
    } else {
        openai::bad_request(message)
    }
}

fn model_not_found(api: Api, model: &str) -> Response {
    if api.is_ollama() {
        ollama::model_not_found(model)
    } else {
        openai::model_not_found(model)
    }
}

/// A configured failure in the API's error shape.
pub(crate) fn failure_response(api: Api, failure: &FakeFailure) -> Response {
    let status = failure.http_status();
    let message = failure.text();
    if api.is_ollama() {
        ollama::error(status, &message)
    } else {
        openai::failure(status, failure.shape, &message)
    }
}
