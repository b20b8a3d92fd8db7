//! The token counters: every answer's reported usage, whole or streamed,
//! OpenAI or Ollama, summed; a stream without a usage chunk adds nothing.

use serde_json::{Value, json};

use super::{MODEL, fake, post};
use crate::FakeBehavior;

fn messages(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[tokio::test]
async fn the_counters_sum_the_usage_of_every_answer() {
    let fake = fake(FakeBehavior::default()).await;
    let mut prompt = 0;
    let mut completion = 0;

    let whole = post(
        &fake,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": messages("one two three")}),
    )
    .await
    .json();
    prompt += whole["usage"]["prompt_tokens"].as_u64().expect("prompt");
    completion += whole["usage"]["completion_tokens"]
        .as_u64()
        .expect("completion");
    assert_eq!(fake.prompt_tokens_reported(), prompt);
    assert_eq!(fake.completion_tokens_reported(), completion);

    let streamed = post(
        &fake,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": messages("four five"), "stream": true,
            "stream_options": {"include_usage": true}}),
    )
    .await
    .sse();
    let usage = streamed
        .iter()
        .find_map(|e| e.get("usage").filter(|u| !u.is_null()))
        .expect("a usage chunk");
    prompt += usage["prompt_tokens"].as_u64().expect("prompt");
    completion += usage["completion_tokens"].as_u64().expect("completion");

    // No usage chunk asked for: nothing reported, nothing counted.
    post(
        &fake,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": messages("six"), "stream": true}),
    )
    .await
    .sse();
    assert_eq!(fake.prompt_tokens_reported(), prompt);

    for stream in [false, true] {
        let answer = post(
            &fake,
            "/api/chat",
            json!({"model": MODEL, "messages": messages("seven eight nine ten"), "stream": stream}),
        )
        .await;
        let last = if stream {
            answer.ndjson().pop().expect("lines")
        } else {
            answer.json()
        };
        prompt += last["prompt_eval_count"]
            .as_u64()
            .expect("prompt_eval_count");
        completion += last["eval_count"].as_u64().expect("eval_count");
    }

    let embedded = post(
        &fake,
        "/v1/embeddings",
        json!({"model": MODEL, "input": ["a b", "c"]}),
    )
    .await
    .json();
    prompt += embedded["usage"]["prompt_tokens"].as_u64().expect("prompt");

    assert!(prompt > 0 && completion > 0);
    assert_eq!(fake.prompt_tokens_reported(), prompt);
    assert_eq!(fake.completion_tokens_reported(), completion);
}
