//! The legacy OpenAI `/v1/completions`: whole and streamed, with the knobs.

use serde_json::{Value, json};

use super::{MODEL, fake, post};
use crate::{DEFAULT_RESPONSE_TOKENS, ErrorShape, FakeBehavior, FakeFailure, reply_text};

const PROMPT: &str = "say something nice";

#[tokio::test]
async fn whole_completion_has_the_text_completion_shape() {
    let fake = fake(FakeBehavior::default()).await;
    let answer = post(
        &fake,
        "/v1/completions",
        json!({"model": MODEL, "prompt": PROMPT}),
    )
    .await;
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert!(body["id"].as_str().expect("id").starts_with("cmpl-"));
    assert_eq!(body["object"], "text_completion");
    assert!(body["created"].is_u64());
    assert_eq!(body["model"], MODEL);
    assert_eq!(
        body["choices"],
        json!([{"text": reply_text(PROMPT, DEFAULT_RESPONSE_TOKENS), "index": 0,
            "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": DEFAULT_RESPONSE_TOKENS,
            "total_tokens": 3 + DEFAULT_RESPONSE_TOKENS})
    );
    assert_eq!(fake.requests_to("/v1/completions"), 1);
    assert_eq!(
        fake.last_body("/v1/completions").expect("recorded")["prompt"],
        PROMPT
    );

    let capped = post(
        &fake,
        "/v1/completions",
        json!({"model": MODEL, "prompt": [PROMPT, "ignored"], "max_tokens": 3}),
    )
    .await
    .json();
    assert_eq!(capped["choices"][0]["text"], reply_text(PROMPT, 3));
    assert_eq!(capped["choices"][0]["finish_reason"], "length");
    assert_eq!(capped["usage"]["prompt_tokens"], 4);
}

#[tokio::test]
async fn streamed_completion_sends_chunks_usage_and_done() {
    let fake = fake(FakeBehavior::default()).await;
    let answer = post(
        &fake,
        "/v1/completions",
        json!({"model": MODEL, "prompt": PROMPT, "stream": true,
            "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    let events = answer.sse();
    let n = DEFAULT_RESPONSE_TOKENS as usize;
    // The pieces, the finish chunk, the usage chunk, [DONE].
    assert_eq!(events.len(), n + 3, "{events:?}");
    let id = events[0]["id"].clone();
    for piece in &events[..n] {
        assert_eq!(piece["object"], "text_completion");
        assert_eq!(piece["id"], id);
        assert_eq!(piece["model"], MODEL);
        assert_eq!(piece["usage"], Value::Null);
        assert!(
            piece.get("usage").is_some(),
            "usage: null with include_usage"
        );
        let choice = &piece["choices"][0];
        assert_eq!(
            (choice["index"].clone(), choice["logprobs"].clone()),
            (json!(0), Value::Null)
        );
        assert_eq!(choice["finish_reason"], Value::Null);
        assert!(choice.get("delta").is_none());
    }
    let text: String = events[..n]
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, reply_text(PROMPT, DEFAULT_RESPONSE_TOKENS));
    assert_eq!(
        events[n]["choices"],
        json!([{"text": "", "index": 0, "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(events[n + 1]["choices"], json!([]));
    assert_eq!(
        events[n + 1]["usage"]["completion_tokens"],
        DEFAULT_RESPONSE_TOKENS
    );
    assert_eq!(events[n + 2], "[DONE]");

    // Without include_usage: no usage chunk, no usage field.
    let plain = post(
        &fake,
        "/v1/completions",
        json!({"model": MODEL, "prompt": PROMPT, "stream": true}),
    )
    .await
    .sse();
    assert_eq!(plain.len(), n + 2);
    assert!(plain[0].get("usage").is_none());
}

#[tokio::test]
async fn knobs_apply_to_legacy_completions() {
    let fake = fake(FakeBehavior {
        fail: Some(FakeFailure {
            first_n: Some(1),
            ..FakeFailure::status(429)
        }),
        cut_after_chunks: Some(2),
        cut_clean: true,
        ..FakeBehavior::default()
    })
    .await;
    let body = json!({"model": MODEL, "prompt": PROMPT, "stream": true});
    let failed = post(&fake, "/v1/completions", body.clone()).await;
    assert_eq!(failed.status, 429);
    assert_eq!(failed.json()["error"]["code"], "rate_limit_exceeded");
    let cut = post(&fake, "/v1/completions", body.clone()).await.sse();
    assert_eq!(cut.len(), 2, "cut after two chunks, no [DONE]: {cut:?}");

    fake.set_behavior(FakeBehavior {
        fail: Some(FakeFailure {
            shape: ErrorShape::Midstream,
            ..FakeFailure::status(500)
        }),
        ..FakeBehavior::default()
    });
    let midstream = post(&fake, "/v1/completions", body).await;
    assert_eq!(midstream.status, 200);
    let events = midstream.sse();
    assert_eq!(events.len(), 3, "a piece, the error, [DONE]: {events:?}");
    assert_eq!(events[0]["choices"][0]["text"], reply_text(PROMPT, 1));
    assert_eq!(events[1]["error"]["code"], 500);
    assert_eq!(events[2], "[DONE]");

    let unknown = post(
        &fake,
        "/v1/completions",
        json!({"model": "nope", "prompt": "x"}),
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "model_not_found");
}
