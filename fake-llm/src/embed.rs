//! Embeddings: OpenAI's `POST /v1/embeddings` (floats or base64 of
//! little-endian `f32`s), Ollama's `POST /api/embed` and its older
//! `POST /api/embeddings`. The vectors are [`embedding`]s of each input;
//! the knobs apply as to generation (through [`admit`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use crate::generate::{Admitted, Api, admit, bad_request, failure_response};
use crate::ollama::LOAD_DURATION_NS;
use crate::reply::fnv1a;
use crate::server::{Shared, json_response};

/// Dimensions of a vector unless the request asks for fewer or more.
pub const EMBEDDING_DIMS: usize = 8;

/// The most dimensions a request may ask for.
const MAX_DIMS: usize = 4096;

/// The unit-length vector of `dims` dimensions the fake gives `text`:
/// derived from a hash of it, so equal texts get equal vectors.
pub fn embedding(text: &str, dims: usize) -> Vec<f32> {
    let mut state = fnv1a(text.as_bytes());
    let raw: Vec<f64> = (0..dims)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // The top 24 bits, in [-1, 1).
            (state >> 40) as f64 / f64::from(1u32 << 23) - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    raw.iter()
        .map(|x| if norm > 0.0 { (x / norm) as f32 } else { 0.0 })
        .collect()
}

/// Standard base64 (with padding) of the vector's little-endian bytes, as
/// OpenAI sends `encoding_format: "base64"`.
pub fn embedding_base64(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64(&bytes)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `dimensions` from the request, else [`EMBEDDING_DIMS`].
fn dims_of(value: &Value) -> usize {
    value
        .get("dimensions")
        .and_then(Value::as_u64)
        .and_then(|d| usize::try_from(d).ok())
        .filter(|d| (1..=MAX_DIMS).contains(d))
        .unwrap_or(EMBEDDING_DIMS)
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Admits the request and checks the configured failure.
async fn admitted(
    shared: &Shared,
    api: Api,
    path: &str,
    body: &Bytes,
) -> Result<Admitted, Response> {
    let admitted = admit(shared, api, path, body).await?;
    if let Some(failure) = &admitted.failure {
        return Err(failure_response(api, failure));
    }
    shared.control().loaded.insert(admitted.model.clone());
    Ok(admitted)
}

/// OpenAI's inputs: a string, strings, a token list or token lists (the
/// tokens' numbers stand for the text); with their token counts.
fn openai_inputs(input: &Value) -> Option<Vec<(String, u64)>> {
    let tokens = |items: &[Value]| -> Option<(String, u64)> {
        let numbers: Option<Vec<String>> = items
            .iter()
            .map(|t| t.as_u64().map(|n| n.to_string()))
            .collect();
        let numbers = numbers?;
        Some((numbers.join(" "), numbers.len() as u64))
    };
    let inputs = match input {
        Value::String(text) if text.is_empty() => return None,
        Value::String(text) => vec![(text.clone(), words(text))],
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|t| (t.to_owned(), words(t)))
            .collect(),
        Value::Array(items) if items.iter().all(Value::is_u64) => vec![tokens(items)?],
        Value::Array(items) => items
            .iter()
            .map(|item| tokens(item.as_array()?))
            .collect::<Option<_>>()?,
        _ => return None,
    };
    (!inputs.is_empty()).then_some(inputs)
}

/// `POST /v1/embeddings`.
pub(crate) async fn openai(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let api = Api::OpenAiEmbed;
    let admitted = match admitted(&shared, api, "/v1/embeddings", &body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let value = &admitted.value;
    let Some(inputs) = value.get("input").and_then(openai_inputs) else {
        return bad_request(
            api,
            "'input' must be a non-empty string, array of strings, or array of token arrays",
        );
    };
    let base64 = match value.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return bad_request(
                api,
                &format!("'{other}' is not one of ['float', 'base64'] - 'encoding_format'"),
            );
        }
    };
    let dims = dims_of(value);
    let prompt_tokens: u64 = inputs.iter().map(|(_, n)| n).sum();
    shared.reported.add(prompt_tokens, 0);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, (text, _))| {
            let vector = embedding(text, dims);
            let embedding = if base64 {
                json!(embedding_base64(&vector))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "object": "list",
            "data": data,
            "model": admitted.model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }),
    )
}

/// `POST /api/embed`: `input` a string or strings; an empty string
/// embeds nothing (it loads the model).
pub(crate) async fn ollama_embed(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let api = Api::OllamaEmbed;
    let admitted = match admitted(&shared, api, "/api/embed", &body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let value = &admitted.value;
    let inputs: Vec<String> = match value.get("input") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) if text.is_empty() => Vec::new(),
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(_) => return bad_request(api, "invalid input type"),
    };
    let dims = dims_of(value);
    let embeddings: Vec<Vec<f32>> = inputs.iter().map(|t| embedding(t, dims)).collect();
    let prompt_eval_count: u64 = inputs.iter().map(|t| words(t)).sum();
    shared.reported.add(prompt_eval_count, 0);
    let total = u64::try_from(admitted.started.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_add(LOAD_DURATION_NS);
    json_response(
        StatusCode::OK,
        json!({
            "model": admitted.model,
            "embeddings": embeddings,
            "total_duration": total,
            "load_duration": LOAD_DURATION_NS,
            "prompt_eval_count": prompt_eval_count,
        }),
    )
}

/// `POST /api/embeddings` (superseded by `/api/embed`): one `prompt`; its
/// vector as `f64`s, as Ollama widens them.
pub(crate) async fn ollama_embeddings(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let admitted = match admitted(&shared, Api::OllamaEmbed, "/api/embeddings", &body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let prompt = admitted
        .value
        .get("prompt")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let vector: Vec<f64> = if prompt.is_empty() {
        Vec::new()
    } else {
        embedding(prompt, dims_of(&admitted.value))
            .into_iter()
            .map(f64::from)
            .collect()
    };
    json_response(StatusCode::OK, json!({"embedding": vector}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding("hello", EMBEDDING_DIMS);
        assert_eq!(a.len(), EMBEDDING_DIMS);
        assert_eq!(a, embedding("hello", EMBEDDING_DIMS));
        assert_ne!(a, embedding("goodbye", EMBEDDING_DIMS));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_eq!(embedding("x", 3).len(), 3);
    }

    #[test]
    fn base64_matches_known_encodings() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        // 1.0f32 is 00 00 80 3f little-endian.
        assert_eq!(embedding_base64(&[1.0]), "AACAPw==");
    }

    #[test]
    fn openai_inputs_take_every_documented_form() {
        let texts =
            |v: Value| openai_inputs(&v).map(|i| i.into_iter().map(|(t, _)| t).collect::<Vec<_>>());
        assert_eq!(texts(json!("a b")), Some(vec!["a b".to_owned()]));
        assert_eq!(
            texts(json!(["a", "b"])),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(texts(json!([1, 2])), Some(vec!["1 2".to_owned()]));
        assert_eq!(
            texts(json!([[1], [2, 3]])),
            Some(vec!["1".to_owned(), "2 3".to_owned()])
        );
        assert_eq!(
            openai_inputs(&json!([[1], [2, 3]])).map(|i| i[1].1),
            Some(2)
        );
        assert_eq!(texts(json!([])), None);
        assert_eq!(texts(json!("")), None);
        assert_eq!(texts(json!(5)), None);
        assert_eq!(texts(json!(["a", 1])), None);
    }
}
