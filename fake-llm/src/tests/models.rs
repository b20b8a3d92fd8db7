//! What the fake says about its models: Ollama's `/api/show` and
//! `/api/version`, OpenAI's `/v1/models/{id}`.

use serde_json::json;

use super::{MODEL, fake, get, post};
use crate::FakeBehavior;

#[tokio::test]
async fn ollama_show_describes_served_models_only() {
    let fake = fake(FakeBehavior::default()).await;
    let answer = post(&fake, "/api/show", json!({"model": MODEL})).await;
    assert_eq!(answer.status, 200);
    let body = answer.json();
    for field in ["modelfile", "parameters", "template", "modified_at"] {
        assert!(body[field].is_string(), "{field}: {body}");
    }
    assert_eq!(body["details"]["format"], "gguf");
    assert_eq!(body["details"]["family"], "qwen2.5");
    assert!(body["model_info"]["general.architecture"].is_string());
    assert_eq!(body["capabilities"], json!(["completion", "tools"]));
    // `name` is the older spelling.
    let by_name = post(&fake, "/api/show", json!({"name": MODEL})).await;
    assert_eq!(by_name.status, 200);

    let unknown = post(&fake, "/api/show", json!({"model": "nope"})).await;
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.json()["error"]
            .as_str()
            .expect("error")
            .contains("nope")
    );
    let missing = post(&fake, "/api/show", json!({})).await;
    assert_eq!(
        (missing.status, missing.json()),
        (400, json!({"error": "model is required"}))
    );
    // No knob applies: a held fake still shows.
    fake.update_behavior(|b| b.hold = true);
    assert_eq!(
        post(&fake, "/api/show", json!({"model": MODEL}))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn openai_model_retrieval_and_ollama_version() {
    let fake = fake(FakeBehavior {
        models: vec!["org/model:tag".to_owned()],
        ..FakeBehavior::default()
    })
    .await;
    let model = get(&fake, "/v1/models/org/model:tag").await;
    assert_eq!(model.status, 200);
    let body = model.json();
    assert_eq!(
        (body["id"].clone(), body["object"].clone()),
        (json!("org/model:tag"), json!("model"))
    );
    assert!(body["created"].is_u64() && body["owned_by"].is_string());
    let unknown = get(&fake, "/v1/models/nope").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "model_not_found");
    let version = get(&fake, "/api/version").await.json();
    assert!(version["version"].is_string());
}
