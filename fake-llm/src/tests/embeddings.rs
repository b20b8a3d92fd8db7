//! The embedding endpoints: OpenAI's (floats and base64), Ollama's
//! `/api/embed` and `/api/embeddings`, and the knobs on them.

use serde_json::{Value, json};

use super::{MODEL, fake, post};
use crate::{EMBEDDING_DIMS, FakeBehavior, FakeFailure, embedding, embedding_base64};

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .expect("an array of numbers")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

#[tokio::test]
async fn openai_embeddings_as_floats_or_base64() {
    let fake = fake(FakeBehavior::default()).await;
    let answer = post(
        &fake,
        "/v1/embeddings",
        json!({"model": MODEL, "input": ["hello world", "bye"]}),
    )
    .await;
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], MODEL);
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3})
    );
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    for (i, (item, text)) in data.iter().zip(["hello world", "bye"]).enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        assert_eq!(floats(&item["embedding"]), embedding(text, EMBEDDING_DIMS));
    }

    let base64 = post(
        &fake,
        "/v1/embeddings",
        json!({"model": MODEL, "input": "hello world", "encoding_format": "base64"}),
    )
    .await
    .json();
    assert_eq!(
        base64["data"][0]["embedding"],
        embedding_base64(&embedding("hello world", EMBEDDING_DIMS))
    );

    let sized = post(
        &fake,
        "/v1/embeddings",
        json!({"model": MODEL, "input": [[1, 2, 3]], "dimensions": 3}),
    )
    .await
    .json();
    assert_eq!(
        floats(&sized["data"][0]["embedding"]),
        embedding("1 2 3", 3)
    );
    assert_eq!(sized["usage"]["prompt_tokens"], 3);
}

#[tokio::test]
async fn openai_embeddings_refuse_bad_requests() {
    let fake = fake(FakeBehavior::default()).await;
    for body in [
        json!({"model": MODEL}),
        json!({"model": MODEL, "input": []}),
        json!({"model": MODEL, "input": "x", "encoding_format": "int8"}),
    ] {
        let answer = post(&fake, "/v1/embeddings", body.clone()).await;
        assert_eq!(answer.status, 400, "{body}");
        assert_eq!(answer.json()["error"]["type"], "invalid_request_error");
    }
    let unknown = post(
        &fake,
        "/v1/embeddings",
        json!({"model": "nope", "input": "x"}),
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn ollama_embed_and_embeddings() {
    let fake = fake(FakeBehavior::default()).await;
    let body = post(
        &fake,
        "/api/embed",
        json!({"model": MODEL, "input": ["why is the sky blue", "hi"]}),
    )
    .await
    .json();
    assert_eq!(body["model"], MODEL);
    let vectors = body["embeddings"].as_array().expect("embeddings");
    assert_eq!(vectors.len(), 2);
    assert_eq!(
        floats(&vectors[0]),
        embedding("why is the sky blue", EMBEDDING_DIMS)
    );
    assert_eq!(body["prompt_eval_count"], 6);
    assert_eq!(body["load_duration"], crate::LOAD_DURATION_NS);
    assert!(body["total_duration"].as_u64().expect("total") >= crate::LOAD_DURATION_NS);

    let one = post(&fake, "/api/embed", json!({"model": MODEL, "input": "hi"}))
        .await
        .json();
    assert_eq!(one["embeddings"].as_array().map(Vec::len), Some(1));
    let empty = post(&fake, "/api/embed", json!({"model": MODEL, "input": ""}))
        .await
        .json();
    assert_eq!(empty["embeddings"], json!([]));
    let bad = post(&fake, "/api/embed", json!({"model": MODEL, "input": [1]})).await;
    assert_eq!(
        (bad.status, bad.json()),
        (400, json!({"error": "invalid input type"}))
    );

    let legacy = post(
        &fake,
        "/api/embeddings",
        json!({"model": MODEL, "prompt": "hi"}),
    )
    .await
    .json();
    assert_eq!(legacy.as_object().map(|o| o.len()), Some(1), "{legacy}");
    // Widened to f64 on the wire, as Ollama does; the same f32s underneath.
    assert_eq!(
        floats(&legacy["embedding"]),
        embedding("hi", EMBEDDING_DIMS)
    );
    let digits = legacy["embedding"][0].to_string().len();
    assert!(digits > 12, "f64 digits: {legacy}");

    for path in ["/api/embed", "/api/embeddings"] {
        let unknown = post(
            &fake,
            path,
            json!({"model": "nope", "input": "x", "prompt": "x"}),
        )
        .await;
        assert_eq!(unknown.status, 404, "{path}");
        assert_eq!(
            unknown.json(),
            json!({"error": "model \"nope\" not found, try pulling it first"})
        );
    }
    let ps = super::get(&fake, "/api/ps").await.json();
    assert_eq!(ps["models"][0]["name"], MODEL, "embedding loads the model");
}

#[tokio::test]
async fn knobs_apply_to_embeddings() {
    let fake = fake(FakeBehavior {
        fail: Some(FakeFailure {
            first_n: Some(2),
            ..FakeFailure::status(503)
        }),
        ..FakeBehavior::default()
    })
    .await;
    let openai = post(
        &fake,
        "/v1/embeddings",
        json!({"model": MODEL, "input": "x"}),
    )
    .await;
    assert_eq!(openai.status, 503);
    assert_eq!(openai.json()["error"]["type"], "server_error");
    let ollama = post(&fake, "/api/embed", json!({"model": MODEL, "input": "x"})).await;
    assert_eq!(ollama.status, 503);
    assert!(ollama.json()["error"].is_string());
    let ok = post(&fake, "/api/embed", json!({"model": MODEL, "input": "x"})).await;
    assert_eq!(ok.status, 200);
}
