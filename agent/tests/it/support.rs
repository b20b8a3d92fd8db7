//! Shared by the backend tests: a fake, a client on it, requests, and the
//! checks every streamed reply must pass.

use std::time::{Duration, Instant};

use kobo_agent::llm::{BackendKind, LlmClient, LlmConfig, LlmError};
use kobo_fake_llm::{ErrorShape, FakeBehavior, FakeFailure, FakeLlm};
use kobo_protocol::{LlmOutput, LlmRequest, Usage};

/// Longest a test waits for the fake to see a request arrive or go away;
/// a bound on a wait for an event, not a guess at how long work takes.
pub(crate) const EVENT_WAIT: Duration = Duration::from_secs(60);

/// How often [`wait_for_requests`] looks at the fake's counter.
const POLL: Duration = Duration::from_millis(2);

pub(crate) const MODEL: &str = kobo_fake_llm::DEFAULT_MODELS[0];

/// Both HTTP backends, for tests that hold for each.
pub(crate) const HTTP_BACKENDS: [BackendKind; 2] = [BackendKind::Ollama, BackendKind::OpenAi];

pub(crate) async fn fake(behavior: FakeBehavior) -> FakeLlm {
    kobo_fake_llm::start(behavior).await.expect("fake starts")
}

/// A client of `kind` on the fake, with no default model and no timeout.
pub(crate) fn client(kind: BackendKind, fake: &FakeLlm) -> LlmClient {
    LlmClient::new(LlmConfig {
        kind,
        endpoint: Some(fake.url()),
        api_key: None,
        default_model: None,
        sim_latency: Duration::ZERO,
        request_timeout: None,
    })
    .expect("client builds")
}

/// Where a [`prompt`] request of `kind` goes.
pub(crate) fn generation_path(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Ollama => "/api/generate",
        BackendKind::OpenAi => "/v1/chat/completions",
        BackendKind::Sim => panic!("the sim backend makes no HTTP calls"),
    }
}

pub(crate) fn prompt(text: &str) -> LlmRequest {
    LlmRequest {
        model: Some(MODEL.to_owned()),
        prompt: Some(text.to_owned()),
        ..LlmRequest::default()
    }
}

/// The fake's prompt token count: whitespace-separated words.
pub(crate) fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

pub(crate) fn failing(status: u16, shape: ErrorShape, message: Option<&str>) -> FakeBehavior {
    FakeBehavior {
        fail: Some(FakeFailure {
            status,
            shape,
            message: message.map(str::to_owned),
            first_n: None,
        }),
        ..FakeBehavior::default()
    }
}

pub(crate) async fn run_err(client: &LlmClient, request: &LlmRequest) -> LlmError {
    match client.run(request).await {
        Ok(output) => panic!("expected an error, got {output:?}"),
        Err(err) => err,
    }
}

/// A streamed reply saw its first token no later than its end.
pub(crate) fn assert_streamed(usage: &Usage) {
    let first = usage
        .first_token_ms
        .expect("streamed, so a first-token time");
    assert!(first <= usage.duration_ms, "{usage:?}");
}

/// The output carries the fake's reply to `input` with `tokens` tokens.
pub(crate) fn assert_reply(output: &LlmOutput, input: &str, tokens: u32) {
    assert_eq!(output.text, kobo_fake_llm::reply_text(input, tokens));
    assert_eq!(output.usage.completion_tokens, u64::from(tokens));
}

/// Waits until the fake has received `n` requests on `path`.
pub(crate) async fn wait_for_requests(fake: &FakeLlm, path: &str, n: u64) {
    let deadline = Instant::now() + EVENT_WAIT;
    while fake.requests_to(path) < n {
        assert!(
            Instant::now() < deadline,
            "{path}: {} requests, waited for {n}",
            fake.requests_to(path)
        );
        tokio::time::sleep(POLL).await;
    }
}
