//! The LLM backends against the fake LLM: replies, usage, model lists,
//! every error shape and its classification, cut streams, hangs and
//! cancellation, and the simulator.

use std::time::{Duration, Instant};

use kobo_agent::llm::{BackendKind, LlmClient, LlmConfig, LlmError};
use kobo_protocol::{ChatMessage, GenerationOptions, LlmOutput, LlmRequest, Role};
use kobo_tests::fake_llm::{
    self, DEFAULT_MODELS, DEFAULT_RESPONSE_TOKENS, ErrorShape, FakeBehavior, FakeFailure, FakeLlm,
    reply_text,
};
use serde_json::json;

/// How long a test waits for the fake to see a request go away.
const IDLE_WAIT: Duration = Duration::from_secs(5);

const MODEL: &str = DEFAULT_MODELS[0];

fn config(kind: BackendKind, endpoint: Option<String>) -> LlmConfig {
    LlmConfig {
        kind,
        endpoint,
        api_key: None,
        default_model: None,
        sim_latency: Duration::ZERO,
        request_timeout: None,
    }
}

fn client(kind: BackendKind, fake: &FakeLlm) -> LlmClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    LlmClient::new(config(kind, Some(fake.url()))).expect("client builds")
}

async fn fake(behavior: FakeBehavior) -> FakeLlm {
    fake_llm::start(behavior).await.expect("fake starts")
}

fn prompt(model: &str, text: &str) -> LlmRequest {
    LlmRequest {
        model: Some(model.to_owned()),
        prompt: Some(text.to_owned()),
        ..LlmRequest::default()
    }
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn failing(failure: FakeFailure) -> FakeBehavior {
    FakeBehavior {
        fail: Some(failure),
        ..FakeBehavior::default()
    }
}

fn failure(status: u16, shape: ErrorShape, message: &str) -> FakeFailure {
    FakeFailure {
        status,
        shape,
        message: Some(message.to_owned()),
        first_n: None,
    }
}

async fn run_err(client: &LlmClient, request: &LlmRequest) -> LlmError {
    match client.run(request).await {
        Ok(output) => panic!("expected an error, got {output:?}"),
        Err(err) => err,
    }
}

fn assert_usage_timings(output: &LlmOutput) {
    let first = output
        .usage
        .first_token_ms
        .expect("streamed, so a first token time");
    assert!(first <= output.usage.duration_ms, "{:?}", output.usage);
}

// ------------------------------------------------------------ happy paths

#[tokio::test]
async fn ollama_generate_streams_text_and_usage() {
    let fake = fake(FakeBehavior::default()).await;
    let client = client(BackendKind::Ollama, &fake);
    let mut request = prompt(MODEL, "why is the sky blue");
    request.system = Some("answer briefly".into());
    request.options = Some(GenerationOptions {
        temperature: Some(0.2),
        seed: Some(7),
        ..GenerationOptions::default()
    });

    let output = client.run(&request).await.expect("run succeeds");

    assert_eq!(
        output.text,
        reply_text("why is the sky blue", DEFAULT_RESPONSE_TOKENS)
    );
    assert_eq!(output.model, MODEL);
    assert_eq!(
        output.usage.prompt_tokens,
        words("answer briefly why is the sky blue")
    );
    assert_eq!(
        output.usage.completion_tokens,
        u64::from(DEFAULT_RESPONSE_TOKENS)
    );
    assert_eq!(
        output.usage.load_ms,
        Some(fake_llm::LOAD_DURATION_NS / 1_000_000)
    );
    assert_usage_timings(&output);
    assert_eq!(fake.requests_to("/api/generate"), 1);
    let sent = fake.last_body("/api/generate").expect("body recorded");
    assert_eq!(
        sent,
        json!({
            "model": MODEL, "prompt": "why is the sky blue", "system": "answer briefly",
            "stream": true, "options": {"temperature": 0.2, "seed": 7}
        })
    );
    assert!(fake.wait_idle(IDLE_WAIT).await);
}

#[tokio::test]
async fn ollama_chat_sends_system_first_and_accumulates_content() {
    let fake = fake(FakeBehavior::default()).await;
    let client = client(BackendKind::Ollama, &fake);
    let request = LlmRequest {
        model: Some(MODEL.into()),
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
                content: "tell me a joke".into(),
            },
        ]),
        format: Some(json!("json")),
        ..LlmRequest::default()
    };

    let output = client.run(&request).await.expect("run succeeds");

    assert_eq!(
        output.text,
        kobo_fake_llm::json_reply(None, &reply_text("tell me a joke", DEFAULT_RESPONSE_TOKENS))
    );
    assert_eq!(
        output.usage.prompt_tokens,
        words("be kind hi there hello tell me a joke")
    );
    assert_eq!(
        output.usage.completion_tokens,
        u64::from(DEFAULT_RESPONSE_TOKENS)
    );
    assert_usage_timings(&output);
    assert_eq!(fake.requests_to("/api/chat"), 1);
    assert_eq!(fake.requests_to("/api/generate"), 0);
    let sent = fake.last_body("/api/chat").expect("body recorded");
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "be kind"},
            {"role": "user", "content": "hi there"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "tell me a joke"},
        ])
    );
    assert_eq!(sent["format"], json!("json"));
}

#[tokio::test]
async fn ollama_max_tokens_is_num_predict() {
    let fake = fake(FakeBehavior::default()).await;
    let client = client(BackendKind::Ollama, &fake);
    let mut request = prompt(MODEL, "count to ten");
    request.options = Some(GenerationOptions {
        max_tokens: Some(3),
        ..GenerationOptions::default()
    });

    let output = client.run(&request).await.expect("run succeeds");

    assert_eq!(output.usage.completion_tokens, 3);
    assert_eq!(output.text, reply_text("count to ten", 3));
    let sent = fake.last_body("/api/generate").expect("body recorded");
    assert_eq!(sent["options"], json!({"num_predict": 3}));
}

#[tokio::test]
async fn openai_streams_text_and_usage_with_or_without_v1() {
    let fake = fake(FakeBehavior {
        response_tokens: 12,
        ..FakeBehavior::default()
    })
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    for endpoint in [
        fake.url(),
        format!("{}/v1", fake.url()),
        format!("{}/v1/", fake.url()),
    ] {
        let mut config = config(BackendKind::OpenAi, Some(endpoint.clone()));
        config.api_key = Some("sk-test".into());
        let client = LlmClient::new(config).expect("client builds");
        let mut request = prompt(DEFAULT_MODELS[1], "write a haiku about rust");
        request.system = Some("you are a poet".into());
        request.format = Some(json!({"type": "object"}));
        request.options = Some(GenerationOptions {
            max_tokens: Some(100),
            top_p: Some(0.5),
            ..GenerationOptions::default()
        });

        let output = client.run(&request).await.expect("run succeeds");

        assert_eq!(
            output.text,
            kobo_fake_llm::json_reply(None, &reply_text("write a haiku about rust", 12)),
            "{endpoint}"
        );
        assert_eq!(output.model, DEFAULT_MODELS[1]);
        assert_eq!(
            output.usage.prompt_tokens,
            words("you are a poet write a haiku about rust")
        );
        assert_eq!(output.usage.completion_tokens, 12);
        assert_eq!(output.usage.load_ms, None);
        assert_usage_timings(&output);
        let sent = fake
            .last_body("/v1/chat/completions")
            .expect("body recorded");
        assert_eq!(sent["stream"], json!(true));
        assert_eq!(sent["stream_options"], json!({"include_usage": true}));
        assert_eq!(sent["max_tokens"], json!(100));
        assert_eq!(sent["top_p"], json!(0.5));
        assert_eq!(
            sent["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "output", "schema": {"type": "object"}}})
        );
        assert_eq!(
            sent["messages"],
            json!([
                {"role": "system", "content": "you are a poet"},
                {"role": "user", "content": "write a haiku about rust"},
            ])
        );
    }
    assert_eq!(fake.requests_to("/v1/chat/completions"), 3);
}

#[tokio::test]
async fn paced_stream_reports_first_token_before_the_end() {
    let fake = fake(FakeBehavior {
        tokens_per_second: 50.0,
        response_tokens: 10,
        latency_ms: 30,
        ..FakeBehavior::default()
    })
    .await;
    for kind in [BackendKind::Ollama, BackendKind::OpenAi] {
        let client = client(kind, &fake);
        let output = client
            .run(&prompt(MODEL, "slow please"))
            .await
            .expect("run succeeds");
        let first = output.usage.first_token_ms.expect("first token time");
        assert!(first >= 30, "{kind}: latency counts: {:?}", output.usage);
        // Ten tokens at 50/s: the last arrives about 180 ms after the first.
        assert!(
            output.usage.duration_ms >= first + 150,
            "{kind}: tokens were paced: {:?}",
            output.usage
        );
        assert_eq!(output.text, reply_text("slow please", 10));
    }
}

#[tokio::test]
async fn default_model_fills_in_and_no_model_is_permanent() {
    let fake = fake(FakeBehavior::default()).await;
    let request = LlmRequest {
        prompt: Some("hi".into()),
        ..LlmRequest::default()
    };
    for kind in [BackendKind::Ollama, BackendKind::OpenAi] {
        let mut with_default = config(kind, Some(fake.url()));
        with_default.default_model = Some(DEFAULT_MODELS[1].into());
        let output = LlmClient::new(with_default)
            .expect("client builds")
            .run(&request)
            .await
            .expect("run succeeds");
        assert_eq!(output.model, DEFAULT_MODELS[1], "{kind}");

        let err = run_err(&client(kind, &fake), &request).await;
        assert!(!err.retryable, "{kind}");
        assert_eq!(
            err.message,
            format!("{kind}: no model: the job names none and the agent has no --llm-model")
        );
    }
    assert_eq!(
        fake.requests(),
        2,
        "the model-less calls never reached the server"
    );
}

#[tokio::test]
async fn request_without_prompt_or_messages_is_permanent() {
    let fake = fake(FakeBehavior::default()).await;
    let err = run_err(
        &client(BackendKind::Ollama, &fake),
        &LlmRequest {
            model: Some(MODEL.into()),
            ..LlmRequest::default()
        },
    )
    .await;
    assert!(!err.retryable);
    assert!(
        err.message.contains("neither a prompt nor messages"),
        "{err}"
    );
    assert_eq!(fake.requests(), 0);
}

// ------------------------------------------------------------ model lists

#[tokio::test]
async fn list_models_on_both_backends() {
    let fake = fake(FakeBehavior {
        models: vec!["a:1b".into(), "b:7b".into(), "c".into()],
        ..FakeBehavior::default()
    })
    .await;
    let expected = vec!["a:1b".to_owned(), "b:7b".to_owned(), "c".to_owned()];
    assert_eq!(
        client(BackendKind::Ollama, &fake)
            .list_models()
            .await
            .expect("tags"),
        expected
    );
    assert_eq!(
        client(BackendKind::OpenAi, &fake)
            .list_models()
            .await
            .expect("models"),
        expected
    );
    assert_eq!(fake.requests_to("/api/tags"), 1);
    assert_eq!(fake.requests_to("/v1/models"), 1);
}

#[tokio::test]
async fn loaded_models_follow_use_on_ollama_only() {
    let fake = fake(FakeBehavior::default()).await;
    let ollama = client(BackendKind::Ollama, &fake);
    assert_eq!(ollama.loaded_models().await.expect("ps"), Some(vec![]));
    ollama
        .run(&prompt(DEFAULT_MODELS[1], "load it"))
        .await
        .expect("run succeeds");
    assert_eq!(
        ollama.loaded_models().await.expect("ps"),
        Some(vec![DEFAULT_MODELS[1].to_owned()])
    );
    let openai = client(BackendKind::OpenAi, &fake);
    assert_eq!(openai.loaded_models().await.expect("none"), None);
    assert_eq!(fake.requests_to("/api/ps"), 2);
}

#[tokio::test]
async fn list_models_error_carries_status() {
    let fake = fake(FakeBehavior::default()).await;
    // Nothing serves /api/tags under this prefix.
    let mut config = config(BackendKind::Ollama, Some(format!("{}/nowhere", fake.url())));
    config.default_model = None;
    let err = LlmClient::new(config)
        .expect("client builds")
        .list_models()
        .await
        .expect_err("404");
    assert!(!err.retryable);
    assert!(err.message.starts_with("ollama: 404 Not Found"), "{err}");
}

// ------------------------------------------------------------ errors

#[tokio::test]
async fn unknown_model_is_permanent_with_the_server_message() {
    let fake = fake(FakeBehavior::default()).await;
    let err = run_err(&client(BackendKind::Ollama, &fake), &prompt("qwen9", "hi")).await;
    assert!(!err.retryable);
    assert_eq!(
        err.message,
        "ollama: 404 Not Found: model \"qwen9\" not found, try pulling it first"
    );

    let err = run_err(&client(BackendKind::OpenAi, &fake), &prompt("qwen9", "hi")).await;
    assert!(!err.retryable);
    assert_eq!(
        err.message,
        "openai: 404 Not Found: The model `qwen9` does not exist or you do not have access to it."
    );
}

#[tokio::test]
async fn openai_error_shape_is_parsed() {
    let fake = fake(failing(failure(
        500,
        ErrorShape::OpenAi,
        "the engine fell over",
    )))
    .await;
    let client = client(BackendKind::OpenAi, &fake);
    let err = run_err(&client, &prompt(MODEL, "hi")).await;
    assert!(err.retryable);
    assert_eq!(
        err.message,
        "openai: 500 Internal Server Error: the engine fell over"
    );

    fake.set_behavior(failing(failure(
        401,
        ErrorShape::OpenAi,
        "Incorrect API key provided",
    )));
    let err = run_err(&client, &prompt(MODEL, "hi")).await;
    assert!(!err.retryable);
    assert_eq!(
        err.message,
        "openai: 401 Unauthorized: Incorrect API key provided"
    );
}

#[tokio::test]
async fn vllm_error_shape_is_parsed() {
    let fake = fake(failing(failure(
        400,
        ErrorShape::Vllm,
        "This model's maximum context length is 2048 tokens",
    )))
    .await;
    let err = run_err(&client(BackendKind::OpenAi, &fake), &prompt(MODEL, "hi")).await;
    assert!(!err.retryable);
    assert_eq!(
        err.message,
        "openai: 400 Bad Request: This model's maximum context length is 2048 tokens"
    );
}

#[tokio::test]
async fn openai_midstream_error_is_parsed_and_classified_by_code() {
    let fake = fake(failing(failure(
        500,
        ErrorShape::Midstream,
        "EngineCore died",
    )))
    .await;
    let client = client(BackendKind::OpenAi, &fake);
    let err = run_err(&client, &prompt(MODEL, "hi")).await;
    assert!(err.retryable, "a server fault mid-stream may pass");
    assert_eq!(err.message, "openai: error in stream: EngineCore died");

    fake.set_behavior(failing(failure(
        400,
        ErrorShape::Midstream,
        "prompt too long",
    )));
    let err = run_err(&client, &prompt(MODEL, "hi")).await;
    assert!(
        !err.retryable,
        "a 400 code mid-stream is the request's fault"
    );
    assert_eq!(err.message, "openai: error in stream: prompt too long");
}

#[tokio::test]
async fn ollama_error_body_and_error_line_are_parsed() {
    let fake = fake(failing(failure(500, ErrorShape::OpenAi, "out of memory"))).await;
    let client = client(BackendKind::Ollama, &fake);
    let err = run_err(&client, &prompt(MODEL, "hi")).await;
    assert!(err.retryable);
    assert_eq!(
        err.message,
        "ollama: 500 Internal Server Error: out of memory"
    );

    fake.set_behavior(failing(failure(400, ErrorShape::OpenAi, "invalid options")));
    let err = run_err(&client, &prompt(MODEL, "hi")).await;
    assert!(!err.retryable);
    assert_eq!(err.message, "ollama: 400 Bad Request: invalid options");

    fake.set_behavior(failing(failure(
        500,
        ErrorShape::Midstream,
        "llama runner process has terminated",
    )));
    let err = run_err(&client, &prompt(MODEL, "hi")).await;
    assert!(err.retryable);
    assert_eq!(
        err.message,
        "ollama: error during generation: llama runner process has terminated"
    );
}

#[tokio::test]
async fn overload_statuses_are_retryable() {
    let fake = fake(FakeBehavior::default()).await;
    for kind in [BackendKind::Ollama, BackendKind::OpenAi] {
        let client = client(kind, &fake);
        for (status, text) in [
            (429, "429 Too Many Requests"),
            (503, "503 Service Unavailable"),
        ] {
            fake.set_behavior(failing(FakeFailure::status(status)));
            let err = run_err(&client, &prompt(MODEL, "hi")).await;
            assert!(err.retryable, "{kind} {status}: {err}");
            assert!(
                err.message.starts_with(&format!("{kind}: {text}: ")),
                "{err}"
            );
        }
    }
}

#[tokio::test]
async fn first_n_failures_then_success() {
    let fake = fake(failing(FakeFailure {
        first_n: Some(2),
        ..FakeFailure::status(503)
    }))
    .await;
    let client = client(BackendKind::Ollama, &fake);
    for attempt in 1..=2 {
        let err = run_err(&client, &prompt(MODEL, "retry me")).await;
        assert!(err.retryable, "attempt {attempt}: {err}");
    }
    let output = client
        .run(&prompt(MODEL, "retry me"))
        .await
        .expect("third succeeds");
    assert_eq!(output.text, reply_text("retry me", DEFAULT_RESPONSE_TOKENS));
    assert_eq!(fake.requests_to("/api/generate"), 3);
}

#[tokio::test]
async fn behavior_changes_through_the_control_endpoint() {
    let fake = fake(FakeBehavior::default()).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let reply = http
        .post(format!("{}/_fake/behavior", fake.url()))
        .json(&json!({"fail": {"status": 502, "message": "bad gateway (set remotely)"}}))
        .send()
        .await
        .expect("control endpoint answers");
    assert!(reply.status().is_success());
    assert_eq!(fake.behavior().fail.map(|f| f.status), Some(502));

    let err = run_err(&client(BackendKind::OpenAi, &fake), &prompt(MODEL, "hi")).await;
    assert!(err.retryable);
    assert_eq!(
        err.message,
        "openai: 502 Bad Gateway: bad gateway (set remotely)"
    );
    assert_eq!(fake.requests(), 1, "control requests are not counted");
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let _ = rustls::crypto::ring::default_provider().install_default();
    for kind in [BackendKind::Ollama, BackendKind::OpenAi] {
        let client =
            LlmClient::new(config(kind, Some(format!("http://{addr}")))).expect("client builds");
        let err = run_err(&client, &prompt(MODEL, "hi")).await;
        assert!(err.retryable, "{kind}: {err}");
        assert!(
            err.message
                .starts_with(&format!("{kind}: cannot connect to http://{addr}: ")),
            "{err}"
        );
        let err = client.list_models().await.expect_err("refused");
        assert!(err.retryable, "{kind}: {err}");
    }
}

#[tokio::test]
async fn bad_endpoint_is_refused_at_construction() {
    for endpoint in ["not a url", "ftp://host/", "unix:/tmp/x"] {
        let err = LlmClient::new(config(BackendKind::Ollama, Some(endpoint.into())))
            .expect_err("bad endpoint");
        assert!(!err.retryable);
        assert!(err.message.contains("bad endpoint"), "{err}");
    }
}

// ------------------------------------------------------------ cut streams

#[tokio::test]
async fn aborted_stream_is_retryable() {
    let fake = fake(FakeBehavior {
        cut_after_chunks: Some(3),
        ..FakeBehavior::default()
    })
    .await;
    for kind in [BackendKind::Ollama, BackendKind::OpenAi] {
        let err = run_err(&client(kind, &fake), &prompt(MODEL, "hi")).await;
        assert!(err.retryable, "{kind}: {err}");
        assert!(
            err.message.starts_with(&format!("{kind}: stream cut")),
            "{err}"
        );
    }
    assert!(fake.wait_idle(IDLE_WAIT).await);
}

#[tokio::test]
async fn stream_ended_without_done_is_retryable() {
    let fake = fake(FakeBehavior {
        cut_after_chunks: Some(3),
        cut_clean: true,
        ..FakeBehavior::default()
    })
    .await;
    let err = run_err(&client(BackendKind::Ollama, &fake), &prompt(MODEL, "hi")).await;
    assert!(err.retryable, "{err}");
    assert_eq!(
        err.message,
        "ollama: stream ended before done (after 3 lines)"
    );

    let err = run_err(&client(BackendKind::OpenAi, &fake), &prompt(MODEL, "hi")).await;
    assert!(err.retryable, "{err}");
    assert_eq!(
        err.message,
        "openai: stream ended before [DONE] (after 3 events)"
    );
}

// ------------------------------------------------------------ cancellation

#[tokio::test]
async fn dropping_a_hung_call_closes_the_request() {
    let fake = fake(FakeBehavior {
        hang: true,
        ..FakeBehavior::default()
    })
    .await;
    for kind in [BackendKind::Ollama, BackendKind::OpenAi] {
        let client = client(kind, &fake);
        let request = prompt(MODEL, "never answered");
        let call = tokio::time::timeout(Duration::from_millis(300), client.run(&request));
        let watch = async {
            // The fake holds the request while the call waits.
            let deadline = Instant::now() + IDLE_WAIT;
            while fake.in_flight() == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            fake.in_flight()
        };
        let (outcome, seen) = tokio::join!(call, watch);
        assert!(outcome.is_err(), "{kind}: the call timed out");
        assert_eq!(seen, 1, "{kind}: the fake held the request");
        assert!(
            fake.wait_idle(IDLE_WAIT).await,
            "{kind}: the fake saw the request go away"
        );
    }
}

#[tokio::test]
async fn dropping_a_call_mid_stream_closes_the_request() {
    let fake = fake(FakeBehavior {
        tokens_per_second: 20.0,
        response_tokens: 1000,
        ..FakeBehavior::default()
    })
    .await;
    for kind in [BackendKind::Ollama, BackendKind::OpenAi] {
        let client = client(kind, &fake);
        let request = prompt(MODEL, "a long story");
        let outcome = tokio::time::timeout(Duration::from_millis(300), client.run(&request)).await;
        assert!(outcome.is_err(), "{kind}: the call was still streaming");
        assert!(
            fake.wait_idle(IDLE_WAIT).await,
            "{kind}: the fake saw the stream go away"
        );
    }
}

#[tokio::test]
async fn request_timeout_is_a_retryable_safety_net() {
    let fake = fake(FakeBehavior {
        latency_ms: 5_000,
        ..FakeBehavior::default()
    })
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = config(BackendKind::Ollama, Some(fake.url()));
    config.request_timeout = Some(Duration::from_millis(150));
    let client = LlmClient::new(config).expect("client builds");
    let started = Instant::now();
    let err = run_err(&client, &prompt(MODEL, "hi")).await;
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(err.retryable);
    assert_eq!(
        err.message,
        "ollama: no answer within the request timeout of 150ms"
    );
    assert!(fake.wait_idle(IDLE_WAIT).await);
}

// ------------------------------------------------------------ sim

#[tokio::test]
async fn sim_is_deterministic_and_takes_its_latency() {
    let mut config = config(BackendKind::Sim, None);
    config.sim_latency = Duration::from_millis(50);
    let client = LlmClient::new(config).expect("sim builds");
    assert_eq!(client.kind(), BackendKind::Sim);
    let request = LlmRequest {
        prompt: Some("what is two plus two".into()),
        ..LlmRequest::default()
    };

    let started = Instant::now();
    let a = client.run(&request).await.expect("sim runs");
    assert!(started.elapsed() >= Duration::from_millis(50));
    let b = client.run(&request).await.expect("sim runs");

    assert_eq!(a.text, b.text);
    assert!(
        a.text.starts_with("[sim] what is two plus two"),
        "{}",
        a.text
    );
    assert_eq!(a.model, "sim");
    assert_eq!(a.usage.prompt_tokens, 5);
    assert_eq!(a.usage.completion_tokens, words(&a.text));
    assert!(a.usage.duration_ms >= 50);
    let other = client
        .run(&LlmRequest {
            prompt: Some("what is three plus three".into()),
            ..LlmRequest::default()
        })
        .await
        .expect("sim runs");
    assert_ne!(other.text, a.text);
    assert_eq!(client.list_models().await.expect("models"), vec!["sim"]);
    assert_eq!(client.loaded_models().await.expect("none"), None);
}

#[tokio::test]
async fn sim_uses_the_default_model_and_is_cancel_safe() {
    let mut config = config(BackendKind::Sim, None);
    config.default_model = Some("tiny".into());
    config.sim_latency = Duration::from_secs(30);
    let client = LlmClient::new(config.clone()).expect("sim builds");
    assert_eq!(client.list_models().await.expect("models"), vec!["tiny"]);
    let request = LlmRequest {
        prompt: Some("hi".into()),
        ..LlmRequest::default()
    };
    config.sim_latency = Duration::ZERO;
    let quick = LlmClient::new(config).expect("sim builds");
    assert_eq!(quick.run(&request).await.expect("sim runs").model, "tiny");
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_millis(50), client.run(&request)).await;
    assert!(outcome.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn backend_kinds_parse() {
    assert_eq!("ollama".parse::<BackendKind>(), Ok(BackendKind::Ollama));
    assert_eq!("openai".parse::<BackendKind>(), Ok(BackendKind::OpenAi));
    assert_eq!("sim".parse::<BackendKind>(), Ok(BackendKind::Sim));
    let err = "llamacpp".parse::<BackendKind>().expect_err("unknown");
    assert!(err.to_string().contains("ollama, openai, sim"), "{err}");
    assert_eq!(BackendKind::OpenAi.as_str(), "openai");
}
