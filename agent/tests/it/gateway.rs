//! The gateway relay (`kobo_agent::gateway::relay`) between the fake LLM and
//! a stub coordinator that records each stream upload: complete answers in
//! each API, cut streams breaking the upload, the coordinator's early 410
//! and 409 aborting the backend call, backend errors never opening one.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use kobo_agent::coordinator::CoordinatorClient;
use kobo_agent::gateway::{Relayed, StreamTarget, relay};
use kobo_agent::llm::{BackendKind, LlmClient, LlmError};
use kobo_fake_llm::{FakeBehavior, FakeLlm};
use kobo_protocol::{GatewayApi, GatewayCall, LlmOutput, StreamQuery};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::support::{EVENT_WAIT, MODEL, client, failing, fake, words};

const JOB_ID: i64 = 41;
const NODE: &str = "node-a";
const LEASE_TOKEN: i64 = 7;

/// What the stub coordinator does with an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Read it to its end, then 204.
    Take,
    /// After its first chunk: 410, the client went away.
    GoneAfterFirstChunk,
    /// After its first chunk: 409, the lease is stale.
    StaleAfterFirstChunk,
}

/// What the stub saw of one upload.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Opened {
        job_id: i64,
        query: StreamQuery,
        content_type: String,
    },
    Chunk,
    /// The body ended cleanly, with these bytes in all.
    Ended(Vec<u8>),
    /// The body broke off after these bytes.
    Broken(Vec<u8>),
}

#[derive(Clone)]
struct Stub {
    answer: Answer,
    seen: mpsc::UnboundedSender<Seen>,
}

async fn upload(
    State(stub): State<Stub>,
    Path(job_id): Path<i64>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let _ = stub.seen.send(Seen::Opened {
        job_id,
        query,
        content_type,
    });
    let mut body = body.into_data_stream();
    let mut bytes = Vec::new();
    loop {
        match body.next().await {
            Some(Ok(chunk)) => {
                bytes.extend_from_slice(&chunk);
                let _ = stub.seen.send(Seen::Chunk);
                match stub.answer {
                    Answer::Take => {}
                    Answer::GoneAfterFirstChunk => {
                        return (StatusCode::GONE, "the client went away").into_response();
                    }
                    Answer::StaleAfterFirstChunk => {
                        return (StatusCode::CONFLICT, "stale lease").into_response();
                    }
                }
            }
            Some(Err(_)) => {
                let _ = stub.seen.send(Seen::Broken(bytes));
                return StatusCode::BAD_REQUEST.into_response();
            }
            None => {
                let _ = stub.seen.send(Seen::Ended(bytes));
                return StatusCode::NO_CONTENT.into_response();
            }
        }
    }
}

/// A stub coordinator answering uploads per `answer`, a client of it, and
/// what it sees.
async fn coordinator(answer: Answer) -> (CoordinatorClient, mpsc::UnboundedReceiver<Seen>) {
    let (seen, events) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/v1/agent/jobs/{job_id}/stream", post(upload))
        .with_state(Stub { answer, seen });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = CoordinatorClient::new(&url, None, None).expect("client builds");
    (client, events)
}

/// The next thing the stub saw, that is not a chunk.
async fn next_seen(events: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    loop {
        let seen = tokio::time::timeout(EVENT_WAIT, events.recv())
            .await
            .expect("the stub saw something in time")
            .expect("the stub is running");
        if seen != Seen::Chunk {
            return seen;
        }
    }
}

fn target() -> StreamTarget<'static> {
    StreamTarget {
        job_id: JOB_ID,
        node_id: NODE,
        lease_token: LEASE_TOKEN,
    }
}

fn chat(api: GatewayApi, stream: bool, text: &str) -> GatewayCall {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
    });
    if api == GatewayApi::OpenAiChat {
        body["stream_options"] = json!({"include_usage": true});
    }
    GatewayCall {
        api,
        body,
        stream,
        resume: None,
    }
}

async fn run(
    llm: &LlmClient,
    coordinator: &CoordinatorClient,
    call: &GatewayCall,
) -> Result<Relayed, LlmError> {
    tokio::time::timeout(EVENT_WAIT, relay(llm, coordinator, target(), call))
        .await
        .expect("the relay ended in time")
}

fn done(relayed: Result<Relayed, LlmError>) -> LlmOutput {
    match relayed {
        Ok(Relayed::Done(output)) => output,
        other => panic!("expected a complete relay, got {other:?}"),
    }
}

/// Relays `call` to a coordinator that takes it; checks what it saw and
/// returns the output and the uploaded bytes.
/// The fake's delay before its answer in [`relay_whole`].
const LATENCY_MS: u64 = 50;

async fn relay_whole(kind: BackendKind, call: &GatewayCall) -> (LlmOutput, String, String) {
    let fake = fake(FakeBehavior {
        latency_ms: LATENCY_MS,
        ..FakeBehavior::default()
    })
    .await;
    let (coordinator, mut events) = coordinator(Answer::Take).await;
    let output = done(run(&client(kind, &fake), &coordinator, call).await);
    let Seen::Opened {
        job_id,
        query,
        content_type,
    } = next_seen(&mut events).await
    else {
        panic!("the upload did not open first");
    };
    assert_eq!(
        (job_id, query.node_id.as_str(), query.lease_token),
        (JOB_ID, NODE, LEASE_TOKEN)
    );
    let Seen::Ended(bytes) = next_seen(&mut events).await else {
        panic!("the upload did not end cleanly");
    };
    (
        output,
        content_type,
        String::from_utf8(bytes).expect("utf-8"),
    )
}

fn assert_fake_reply(output: &LlmOutput, input: &str) {
    let tokens = kobo_fake_llm::DEFAULT_RESPONSE_TOKENS;
    assert_eq!(output.text, kobo_fake_llm::reply_text(input, tokens));
    assert_eq!(output.model, MODEL);
    assert_eq!(output.usage.completion_tokens, u64::from(tokens));
    assert_eq!(output.usage.prompt_tokens, words(input));
}

#[tokio::test]
async fn openai_stream_is_uploaded_whole_from_either_backend() {
    let input = "say something nice";
    for kind in [BackendKind::OpenAi, BackendKind::Ollama] {
        let call = chat(GatewayApi::OpenAiChat, true, input);
        let (output, content_type, bytes) = relay_whole(kind, &call).await;
        assert_fake_reply(&output, input);
        assert!(output.usage.first_token_ms.is_some(), "{kind}");
        assert_eq!(content_type, "text/event-stream", "{kind}");
        assert!(bytes.starts_with("data: {"), "{kind}: {bytes}");
        assert!(bytes.ends_with("data: [DONE]\n\n"), "{kind}: {bytes}");
    }
}

#[tokio::test]
async fn ollama_stream_is_uploaded_whole() {
    let input = "tell me about nodes";
    let call = chat(GatewayApi::OllamaChat, true, input);
    let (output, content_type, bytes) = relay_whole(BackendKind::Ollama, &call).await;
    assert_fake_reply(&output, input);
    assert_eq!(content_type, "application/x-ndjson");
    let last: Value = serde_json::from_str(bytes.lines().last().expect("lines")).expect("json");
    assert_eq!(last["done"], json!(true));
    let text: String = bytes
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("json line"))
        .filter_map(|line| line["message"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, output.text);
}

#[tokio::test]
async fn whole_json_answers_are_uploaded_as_sent() {
    let input = "no stream please";
    for api in [GatewayApi::OpenAiChat, GatewayApi::OllamaChat] {
        let call = chat(api, false, input);
        let (output, content_type, bytes) = relay_whole(BackendKind::Ollama, &call).await;
        assert_fake_reply(&output, input);
        assert_eq!(output.usage.first_token_ms, None, "{api:?}");
        assert!(
            output.usage.duration_ms >= LATENCY_MS,
            "the LLM's time counts from the call, not from the answer's headers: {api:?} {:?}",
            output.usage
        );
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        let value: Value = serde_json::from_str(&bytes).expect("one JSON document");
        let text = value["choices"][0]["message"]["content"]
            .as_str()
            .or(value["message"]["content"].as_str());
        assert_eq!(text, Some(output.text.as_str()), "{api:?}");
    }
}

#[tokio::test]
async fn a_stream_cut_before_its_end_breaks_the_upload() {
    for (api, kind) in [
        (GatewayApi::OpenAiChat, BackendKind::OpenAi),
        (GatewayApi::OllamaChat, BackendKind::Ollama),
    ] {
        for cut_clean in [true, false] {
            let fake = fake(FakeBehavior {
                cut_after_chunks: Some(3),
                cut_clean,
                ..FakeBehavior::default()
            })
            .await;
            let (coordinator, mut events) = coordinator(Answer::Take).await;
            let call = chat(api, true, "a long answer");
            let err = run(&client(kind, &fake), &coordinator, &call)
                .await
                .expect_err("a cut stream fails");
            assert!(err.retryable, "{api:?} clean={cut_clean}: {err}");
            assert!(matches!(next_seen(&mut events).await, Seen::Opened { .. }));
            let seen = next_seen(&mut events).await;
            assert!(
                matches!(seen, Seen::Broken(_)),
                "{api:?} clean={cut_clean}: {seen:?}"
            );
        }
    }
}

/// A backend answering for minutes, one token every 50 ms.
fn slow_stream() -> FakeBehavior {
    FakeBehavior {
        tokens_per_second: 20.0,
        response_tokens: 10_000,
        ..FakeBehavior::default()
    }
}

async fn assert_backend_call_aborted(fake: &FakeLlm) {
    assert!(
        fake.wait_idle(EVENT_WAIT).await,
        "the backend call was not aborted: {} in flight",
        fake.in_flight()
    );
}

#[tokio::test]
async fn an_early_410_or_409_drops_the_job_and_aborts_the_backend_call() {
    for answer in [Answer::GoneAfterFirstChunk, Answer::StaleAfterFirstChunk] {
        let fake = fake(slow_stream()).await;
        let (coordinator, _events) = coordinator(answer).await;
        let call = chat(GatewayApi::OllamaChat, true, "go on forever");
        let relayed = run(&client(BackendKind::Ollama, &fake), &coordinator, &call).await;
        match relayed {
            Ok(Relayed::Dropped(message)) => {
                let expected = match answer {
                    Answer::GoneAfterFirstChunk => "410",
                    _ => "409",
                };
                assert!(message.contains(expected), "{answer:?}: {message}");
            }
            other => panic!("{answer:?}: expected the job dropped, got {other:?}"),
        }
        assert_backend_call_aborted(&fake).await;
    }
}

#[tokio::test]
async fn dropping_the_relay_breaks_the_upload_and_aborts_the_backend_call() {
    let fake = fake(slow_stream()).await;
    let (coordinator, mut events) = coordinator(Answer::Take).await;
    let llm = client(BackendKind::OpenAi, &fake);
    let task = tokio::spawn(async move {
        let call = chat(GatewayApi::OpenAiChat, true, "go on forever");
        relay(&llm, &coordinator, target(), &call).await
    });
    assert!(matches!(next_seen(&mut events).await, Seen::Opened { .. }));
    let first = tokio::time::timeout(EVENT_WAIT, events.recv()).await;
    assert_eq!(first.expect("a first chunk in time"), Some(Seen::Chunk));
    // As the runner does when the job is cancelled or the agent drains.
    task.abort();
    let seen = next_seen(&mut events).await;
    assert!(matches!(seen, Seen::Broken(_)), "{seen:?}");
    assert_backend_call_aborted(&fake).await;
}

#[tokio::test]
async fn backend_errors_fail_the_job_without_an_upload() {
    for (status, retryable) in [(500, true), (429, true), (400, false)] {
        let fake = fake(failing(
            status,
            kobo_fake_llm::ErrorShape::OpenAi,
            Some("backend says no"),
        ))
        .await;
        let (coordinator, mut events) = coordinator(Answer::Take).await;
        let call = chat(GatewayApi::OpenAiChat, true, "hello");
        let err = run(&client(BackendKind::OpenAi, &fake), &coordinator, &call)
            .await
            .expect_err("the backend failed");
        assert_eq!(err.retryable, retryable, "{status}: {err}");
        assert!(err.message.contains("backend says no"), "{status}: {err}");
        assert!(events.try_recv().is_err(), "{status}: an upload was opened");
    }
}

#[tokio::test]
async fn an_openai_backend_refuses_the_ollama_api_without_calling_it() {
    let fake = fake(FakeBehavior::default()).await;
    let (coordinator, mut events) = coordinator(Answer::Take).await;
    let call = chat(GatewayApi::OllamaChat, true, "hello");
    let err = run(&client(BackendKind::OpenAi, &fake), &coordinator, &call)
        .await
        .expect_err("not served");
    assert!(!err.retryable, "{err}");
    assert!(
        err.message
            .starts_with("this node's backend (openai) does not serve the Ollama API"),
        "{err}"
    );
    assert_eq!(fake.requests(), 0);
    assert!(events.try_recv().is_err());
}

#[tokio::test]
async fn gateway_urls_per_backend() {
    let fake = fake(FakeBehavior::default()).await;
    let ollama = client(BackendKind::Ollama, &fake);
    let openai = client(BackendKind::OpenAi, &fake);
    for api in [GatewayApi::OpenAiChat, GatewayApi::OpenAiEmbeddings] {
        let expected = format!("{}{}", fake.url(), api.path());
        assert_eq!(ollama.gateway_url(api).expect("served"), expected);
        assert_eq!(openai.gateway_url(api).expect("served"), expected);
    }
    assert_eq!(
        ollama.gateway_url(GatewayApi::OllamaEmbed).expect("served"),
        format!("{}/api/embed", fake.url())
    );
    assert!(openai.gateway_url(GatewayApi::OllamaEmbed).is_err());
}
