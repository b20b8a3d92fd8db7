//! The Ollama backend against the fake: `/api/generate` and `/api/chat`
//! replies with usage, streamed text, the model lists, errors in the body
//! and in the stream, and cut streams.

use kobo_agent::llm::BackendKind;
use kobo_fake_llm::{
    DEFAULT_MODELS, DEFAULT_RESPONSE_TOKENS, ErrorShape, FakeBehavior, LOAD_DURATION_NS,
};
use kobo_protocol::{ChatMessage, GenerationOptions, LlmRequest, Role};
use serde_json::json;

use crate::support::{
    EVENT_WAIT, MODEL, assert_reply, assert_streamed, client, failing, fake, prompt, run_err, words,
};

#[tokio::test]
async fn generate_answers_with_text_usage_and_load_time() {
    let fake = fake(FakeBehavior::default()).await;
    let mut request = prompt("why is the sky blue");
    request.system = Some("answer briefly".into());

    let output = client(BackendKind::Ollama, &fake)
        .run(&request)
        .await
        .expect("run succeeds");

    assert_reply(&output, "why is the sky blue", DEFAULT_RESPONSE_TOKENS);
    assert_eq!(output.model, MODEL);
    assert_eq!(
        output.usage.prompt_tokens,
        words("answer briefly why is the sky blue")
    );
    assert_eq!(output.usage.load_ms, Some(LOAD_DURATION_NS / 1_000_000));
    assert_streamed(&output.usage);
    assert_eq!(fake.requests_to("/api/generate"), 1);
    assert_eq!(
        fake.last_body("/api/generate").expect("body recorded"),
        json!({
            "model": MODEL, "prompt": "why is the sky blue",
            "system": "answer briefly", "stream": true
        })
    );
    assert!(fake.wait_idle(EVENT_WAIT).await, "the reply body ended");
}

#[tokio::test]
async fn chat_stream_is_assembled_into_the_fake_reply() {
    // 10 tokens, 50 ms apart: the reply arrives as separate NDJSON lines.
    let fake = fake(FakeBehavior {
        response_tokens: 10,
        tokens_per_second: 20.0,
        ..FakeBehavior::default()
    })
    .await;
    let request = LlmRequest {
        model: Some(DEFAULT_MODELS[1].into()),
        system: Some("be kind".into()),
        messages: Some(vec![
            ChatMessage {
                role: Role::User,
                content: "hi there".into(),
            },
            ChatMessage {
                role: Role::Assistant,
                content: "hello".into(),
            },
            ChatMessage {
                role: Role::User,
                content: "tell me a story".into(),
            },
        ]),
        ..LlmRequest::default()
    };

    let output = client(BackendKind::Ollama, &fake)
        .run(&request)
        .await
        .expect("run succeeds");

    assert_reply(&output, "tell me a story", 10);
    assert_eq!(output.model, DEFAULT_MODELS[1]);
    assert_eq!(
        output.usage.prompt_tokens,
        words("be kind hi there hello tell me a story")
    );
    assert_streamed(&output.usage);
    // The fake sleeps 50 ms before each of the 10 lines after the first
    // (9 pieces and `done`): 500 ms at least, less slack for delayed sends.
    let first = output.usage.first_token_ms.expect("first token");
    assert!(
        output.usage.duration_ms >= first + 300,
        "the text came in paced pieces: {:?}",
        output.usage
    );
    assert_eq!(fake.requests_to("/api/chat"), 1);
    assert_eq!(fake.requests_to("/api/generate"), 0);
    assert_eq!(
        fake.last_body("/api/chat").expect("body recorded")["messages"],
        json!([
            {"role": "system", "content": "be kind"},
            {"role": "user", "content": "hi there"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "tell me a story"},
        ])
    );
}

#[tokio::test]
async fn max_tokens_is_sent_as_num_predict_and_caps_the_reply() {
    let fake = fake(FakeBehavior::default()).await;
    let mut request = prompt("count to ten");
    request.options = Some(GenerationOptions {
        max_tokens: Some(3),
        ..GenerationOptions::default()
    });

    let output = client(BackendKind::Ollama, &fake)
        .run(&request)
        .await
        .expect("run succeeds");

    assert_reply(&output, "count to ten", 3);
    assert_eq!(
        fake.last_body("/api/generate").expect("body recorded")["options"],
        json!({"num_predict": 3})
    );
}

#[tokio::test]
async fn model_lists_come_from_tags_and_ps() {
    let fake = fake(FakeBehavior {
        models: vec!["a:1b".into(), "b:7b".into()],
        ..FakeBehavior::default()
    })
    .await;
    let client = client(BackendKind::Ollama, &fake);

    assert_eq!(
        client.list_models().await.expect("tags"),
        vec!["a:1b".to_owned(), "b:7b".to_owned()]
    );
    assert_eq!(client.loaded_models().await.expect("ps"), Some(vec![]));
    let mut request = prompt("load it");
    request.model = Some("b:7b".into());
    client.run(&request).await.expect("run succeeds");
    assert_eq!(
        client.loaded_models().await.expect("ps"),
        Some(vec!["b:7b".to_owned()])
    );
}

#[tokio::test]
async fn unknown_model_is_permanent_with_the_server_message() {
    let fake = fake(FakeBehavior::default()).await;
    let mut request = prompt("hi");
    request.model = Some("qwen9".into());

    let err = run_err(&client(BackendKind::Ollama, &fake), &request).await;

    assert!(!err.retryable, "{err}");
    assert_eq!(
        err.message,
        "ollama: 404 Not Found: model \"qwen9\" not found, try pulling it first"
    );
}

#[tokio::test]
async fn error_line_in_the_stream_is_a_retryable_failure() {
    let fake = fake(failing(
        500,
        ErrorShape::Midstream,
        Some("llama runner process has terminated"),
    ))
    .await;

    let err = run_err(&client(BackendKind::Ollama, &fake), &prompt("hi")).await;

    assert!(err.retryable, "{err}");
    assert_eq!(
        err.message,
        "ollama: error during generation: llama runner process has terminated"
    );
}

#[tokio::test]
async fn aborted_stream_is_a_retryable_failure() {
    let fake = fake(FakeBehavior {
        cut_after_chunks: Some(3),
        ..FakeBehavior::default()
    })
    .await;

    let err = run_err(&client(BackendKind::Ollama, &fake), &prompt("hi")).await;

    assert!(err.retryable, "{err}");
    assert!(err.message.starts_with("ollama: stream cut"), "{err}");
    assert_eq!(fake.requests_to("/api/generate"), 1);
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

    let err = run_err(&client(BackendKind::Ollama, &fake), &prompt("hi")).await;

    assert!(err.retryable, "{err}");
    assert_eq!(
        err.message,
        "ollama: stream ended before done (after 3 lines)"
    );
}
