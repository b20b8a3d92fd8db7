//! The OpenAI-compatible backend against the fake: `/v1/chat/completions`
//! streamed as SSE with the usage chunk, `/v1/models`, error bodies in the
//! OpenAI and vLLM shapes, errors inside the stream, and cut streams.

use kobo_agent::llm::{BackendKind, LlmClient, LlmConfig};
use kobo_fake_llm::{DEFAULT_MODELS, ErrorShape, FakeBehavior};
use kobo_protocol::GenerationOptions;
use serde_json::json;

use crate::support::{
    EVENT_WAIT, MODEL, assert_reply, assert_streamed, client, failing, fake, prompt, run_err, words,
};

#[tokio::test]
async fn completion_answers_with_text_and_the_usage_chunk() {
    let fake = fake(FakeBehavior {
        response_tokens: 12,
        ..FakeBehavior::default()
    })
    .await;
    let mut request = prompt("write a haiku about rust");
    request.system = Some("you are a poet".into());
    request.options = Some(GenerationOptions {
        max_tokens: Some(100),
        ..GenerationOptions::default()
    });

    let output = client(BackendKind::OpenAi, &fake)
        .run(&request)
        .await
        .expect("run succeeds");

    assert_reply(&output, "write a haiku about rust", 12);
    assert_eq!(output.model, MODEL);
    assert_eq!(
        output.usage.prompt_tokens,
        words("you are a poet write a haiku about rust")
    );
    assert_eq!(
        output.usage.load_ms, None,
        "OpenAI servers report no load time"
    );
    assert_streamed(&output.usage);
    let sent = fake
        .last_body("/v1/chat/completions")
        .expect("body recorded");
    assert_eq!(sent["stream"], json!(true));
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(sent["max_tokens"], json!(100));
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "you are a poet"},
            {"role": "user", "content": "write a haiku about rust"},
        ])
    );
    assert!(fake.wait_idle(EVENT_WAIT).await, "the reply body ended");
}

#[tokio::test]
async fn sse_stream_is_assembled_into_the_fake_reply() {
    // 10 tokens, 50 ms apart: the reply arrives as separate SSE events.
    let fake = fake(FakeBehavior {
        response_tokens: 10,
        tokens_per_second: 20.0,
        ..FakeBehavior::default()
    })
    .await;

    let output = client(BackendKind::OpenAi, &fake)
        .run(&prompt("tell me a story"))
        .await
        .expect("run succeeds");

    assert_reply(&output, "tell me a story", 10);
    assert_streamed(&output.usage);
    // After the first piece: 9 pieces, the finish, the usage and [DONE],
    // 50 ms apart: 600 ms at least, less slack for delayed sends.
    let first = output.usage.first_token_ms.expect("first token");
    assert!(
        output.usage.duration_ms >= first + 300,
        "the text came in paced pieces: {:?}",
        output.usage
    );
}

#[tokio::test]
async fn endpoint_with_v1_and_an_api_key_reaches_the_same_server() {
    let fake = fake(FakeBehavior::default()).await;
    let client = LlmClient::new(LlmConfig {
        kind: BackendKind::OpenAi,
        endpoint: Some(format!("{}/v1/", fake.url())),
        api_key: Some("sk-test".into()),
        default_model: Some(DEFAULT_MODELS[1].into()),
        sim_latency: std::time::Duration::ZERO,
        request_timeout: None,
    })
    .expect("client builds");
    let mut request = prompt("hi");
    request.model = None;

    let output = client.run(&request).await.expect("run succeeds");

    assert_eq!(
        output.model, DEFAULT_MODELS[1],
        "the default model filled in"
    );
    assert_eq!(
        client.list_models().await.expect("models"),
        DEFAULT_MODELS.map(str::to_owned).to_vec()
    );
    assert_eq!(fake.requests_to("/v1/chat/completions"), 1);
    assert_eq!(fake.requests_to("/v1/models"), 1);
    assert_eq!(client.loaded_models().await.expect("no list"), None);
}

#[tokio::test]
async fn unknown_model_is_permanent_with_the_server_message() {
    let fake = fake(FakeBehavior::default()).await;
    let mut request = prompt("hi");
    request.model = Some("qwen9".into());

    let err = run_err(&client(BackendKind::OpenAi, &fake), &request).await;

    assert!(!err.retryable, "{err}");
    assert_eq!(
        err.message,
        "openai: 404 Not Found: The model `qwen9` does not exist or you do not have access to it."
    );
}

#[tokio::test]
async fn vllm_error_body_is_parsed() {
    let fake = fake(failing(
        400,
        ErrorShape::Vllm,
        Some("This model's maximum context length is 2048 tokens"),
    ))
    .await;

    let err = run_err(&client(BackendKind::OpenAi, &fake), &prompt("hi")).await;

    assert!(!err.retryable, "{err}");
    assert_eq!(
        err.message,
        "openai: 400 Bad Request: This model's maximum context length is 2048 tokens"
    );
}

#[tokio::test]
async fn error_in_the_stream_is_classified_by_its_code() {
    let fake = fake(failing(500, ErrorShape::Midstream, Some("EngineCore died"))).await;
    let client = client(BackendKind::OpenAi, &fake);

    let err = run_err(&client, &prompt("hi")).await;
    assert!(err.retryable, "a server fault mid-stream may pass: {err}");
    assert_eq!(err.message, "openai: error in stream: EngineCore died");

    fake.set_behavior(failing(400, ErrorShape::Midstream, Some("prompt too long")));
    let err = run_err(&client, &prompt("hi")).await;
    assert!(
        !err.retryable,
        "a 400 mid-stream is the request's fault: {err}"
    );
    assert_eq!(err.message, "openai: error in stream: prompt too long");
}

#[tokio::test]
async fn aborted_stream_is_a_retryable_failure() {
    let fake = fake(FakeBehavior {
        cut_after_chunks: Some(3),
        ..FakeBehavior::default()
    })
    .await;

    let err = run_err(&client(BackendKind::OpenAi, &fake), &prompt("hi")).await;

    assert!(err.retryable, "{err}");
    assert!(err.message.starts_with("openai: stream cut"), "{err}");
    assert_eq!(fake.requests_to("/v1/chat/completions"), 1);
    assert!(fake.wait_idle(EVENT_WAIT).await);
}

#[tokio::test]
async fn stream_ended_before_done_is_a_retryable_failure() {
    let fake = fake(FakeBehavior {
        cut_after_chunks: Some(3),
        cut_clean: true,
        ..FakeBehavior::default()
    })
    .await;

    let err = run_err(&client(BackendKind::OpenAi, &fake), &prompt("hi")).await;

    assert!(err.retryable, "{err}");
    assert_eq!(
        err.message,
        "openai: stream ended before [DONE] (after 3 events)"
    );
}
