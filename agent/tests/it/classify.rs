//! Which failures another attempt may pass (`LlmError::retryable`), on both
//! HTTP backends: error statuses, a server that is down, and a server that
//! fails a few times and then answers.

use kobo_agent::llm::{LlmClient, LlmConfig};
use kobo_fake_llm::{DEFAULT_RESPONSE_TOKENS, FakeBehavior, FakeFailure};

use crate::support::{HTTP_BACKENDS, assert_reply, client, fake, generation_path, prompt, run_err};

/// Status, the status line in the agent's message, the fake's stock text,
/// and whether the agent may retry.
const STATUSES: [(u16, &str, &str, bool); 9] = [
    (400, "400 Bad Request", "invalid request (fake)", false),
    (401, "401 Unauthorized", "invalid api key (fake)", false),
    (403, "403 Forbidden", "fake failure with status 403", false),
    (404, "404 Not Found", "fake failure with status 404", false),
    (
        408,
        "408 Request Timeout",
        "fake failure with status 408",
        true,
    ),
    (
        429,
        "429 Too Many Requests",
        "rate limit reached, retry later (fake)",
        true,
    ),
    (
        500,
        "500 Internal Server Error",
        "internal server error (fake)",
        true,
    ),
    (502, "502 Bad Gateway", "fake failure with status 502", true),
    (
        503,
        "503 Service Unavailable",
        "server overloaded (fake)",
        true,
    ),
];

#[tokio::test]
async fn error_statuses_are_classified_with_the_server_message() {
    let fake = fake(FakeBehavior::default()).await;
    for kind in HTTP_BACKENDS {
        let client = client(kind, &fake);
        for (status, line, text, retryable) in STATUSES {
            fake.set_behavior(FakeBehavior {
                fail: Some(FakeFailure::status(status)),
                ..FakeBehavior::default()
            });
            let err = run_err(&client, &prompt("hi")).await;
            assert_eq!(err.retryable, retryable, "{kind} {status}: {err}");
            assert_eq!(err.message, format!("{kind}: {line}: {text}"));
        }
    }
    for kind in HTTP_BACKENDS {
        assert_eq!(
            fake.requests_to(generation_path(kind)),
            STATUSES.len() as u64,
            "{kind}"
        );
    }
}

#[tokio::test]
async fn a_retried_call_passes_once_the_failures_stop() {
    for kind in HTTP_BACKENDS {
        let fake = fake(FakeBehavior {
            fail: Some(FakeFailure {
                first_n: Some(2),
                ..FakeFailure::status(503)
            }),
            ..FakeBehavior::default()
        })
        .await;
        let client = client(kind, &fake);
        for attempt in 1..=2 {
            let err = run_err(&client, &prompt("retry me")).await;
            assert!(err.retryable, "{kind} attempt {attempt}: {err}");
        }
        let output = client
            .run(&prompt("retry me"))
            .await
            .expect("the third attempt succeeds");
        assert_reply(&output, "retry me", DEFAULT_RESPONSE_TOKENS);
        assert_eq!(fake.requests(), 3, "{kind}");
    }
}

#[tokio::test]
async fn a_server_that_is_down_is_retryable() {
    // A port nothing listens on: bound, read, released.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    for kind in HTTP_BACKENDS {
        let client = LlmClient::new(LlmConfig {
            kind,
            endpoint: Some(format!("http://{addr}")),
            api_key: None,
            default_model: None,
            sim_latency: std::time::Duration::ZERO,
            request_timeout: None,
        })
        .expect("client builds");
        let err = run_err(&client, &prompt("hi")).await;
        assert!(err.retryable, "{kind}: {err}");
        assert!(
            err.message
                .starts_with(&format!("{kind}: cannot connect to http://{addr}: ")),
            "{err}"
        );
    }
}
