//! What a gateway request may say: the fields each API accepts and kobo
//! carries to the backend unchanged. A field kobo cannot carry is a 400
//! naming it, never silently dropped.

use kobo_protocol::{GatewayApi, GatewayCall, validate};
use serde_json::{Map, Value};

use super::errors::{Dialect, GatewayError};

/// Fields carried per API (the body goes to the backend as sent).
fn allowed(api: GatewayApi) -> &'static [&'static str] {
    match api {
        GatewayApi::OpenAiChat => &[
            "model",
            "messages",
            "stream",
            "stream_options",
            "temperature",
            "top_p",
            "max_tokens",
            "max_completion_tokens",
            "stop",
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "response_format",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "user",
            "n",
            "logit_bias",
            "logprobs",
            "top_logprobs",
            "reasoning_effort",
        ],
        GatewayApi::OpenAiCompletions => &[
            "model",
            "prompt",
            "suffix",
            "stream",
            "stream_options",
            "temperature",
            "top_p",
            "max_tokens",
            "stop",
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "user",
            "n",
            "echo",
            "logprobs",
            "logit_bias",
        ],
        GatewayApi::OpenAiEmbeddings => {
            &["model", "input", "encoding_format", "dimensions", "user"]
        }
        GatewayApi::OllamaChat => &[
            "model",
            "messages",
            "stream",
            "format",
            "options",
            "keep_alive",
            "tools",
            "think",
        ],
        GatewayApi::OllamaGenerate => &[
            "model",
            "prompt",
            "suffix",
            "system",
            "template",
            "context",
            "stream",
            "raw",
            "format",
            "options",
            "keep_alive",
            "images",
            "think",
        ],
        GatewayApi::OllamaEmbed => &[
            "model",
            "input",
            "truncate",
            "options",
            "keep_alive",
            "dimensions",
        ],
        GatewayApi::OllamaEmbeddings => &["model", "prompt", "options", "keep_alive"],
    }
}

/// The field that carries the input, and its JSON type.
fn required(api: GatewayApi) -> (&'static str, &'static str) {
    match api {
        GatewayApi::OpenAiChat | GatewayApi::OllamaChat => ("messages", "array"),
        GatewayApi::OpenAiCompletions | GatewayApi::OllamaGenerate => ("prompt", "string"),
        GatewayApi::OllamaEmbeddings => ("prompt", "string"),
        GatewayApi::OpenAiEmbeddings | GatewayApi::OllamaEmbed => ("input", "string or array"),
    }
}

fn dialect(api: GatewayApi) -> Dialect {
    if api.is_ollama() {
        Dialect::Ollama
    } else {
        Dialect::OpenAi
    }
}

/// A checked gateway request.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Checked {
    pub(super) model: String,
    pub(super) call: GatewayCall,
}

/// Checks a request body of `api`: a JSON object, a `model`, its input field,
/// only fields kobo carries, and a `stream` the API can honour.
pub(super) fn check(api: GatewayApi, body: &[u8]) -> Result<Checked, GatewayError> {
    let d = dialect(api);
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            d,
            axum::http::StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {e}"),
        )
    })?;
    let Value::Object(map) = value else {
        return Err(GatewayError::new(
            d,
            axum::http::StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    };
    let allowed = allowed(api);
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(GatewayError::field(
            d,
            unknown,
            format!(
                "`{unknown}` is not supported by kobo's {} (it would not reach the model); supported: {}",
                api.path(),
                allowed.join(", ")
            ),
        ));
    }
    let model = match map.get("model") {
        Some(Value::String(model)) if !model.trim().is_empty() => model.trim().to_owned(),
        Some(_) => {
            return Err(GatewayError::field(
                d,
                "model",
                "`model` must be a non-empty string",
            ));
        }
        None => return Err(GatewayError::field(d, "model", "`model` is required")),
    };
    // As a node's announced models are: no model with a control character
    // or a space could be served.
    validate::name("model", &model).map_err(|e| GatewayError::field(d, "model", e.message))?;
    let (input, kind) = required(api);
    let input_ok = match (map.get(input), kind) {
        (Some(Value::Array(items)), "array") => !items.is_empty(),
        (Some(Value::String(_)), "string") => true,
        (Some(Value::String(_) | Value::Array(_)), "string or array") => true,
        _ => false,
    };
    if !input_ok {
        return Err(GatewayError::field(
            d,
            input,
            format!("`{input}` is required and must be a non-empty {kind}"),
        ));
    }
    if let Some(options) = map.get("options")
        && !options.is_object()
    {
        return Err(GatewayError::field(
            d,
            "options",
            "`options` must be an object",
        ));
    }
    let stream = stream_of(api, &map)?;
    Ok(Checked {
        model,
        call: GatewayCall {
            api,
            body: Value::Object(map),
            stream,
            resume: None,
        },
    })
}

/// `stream`, with each API's default: Ollama streams unless told not to,
/// OpenAI does not unless told to; embeddings never stream.
fn stream_of(api: GatewayApi, map: &Map<String, Value>) -> Result<bool, GatewayError> {
    let d = dialect(api);
    let stream = match map.get("stream") {
        None | Some(Value::Null) => api.is_ollama() && api.can_stream(),
        Some(Value::Bool(stream)) => *stream,
        Some(_) => {
            return Err(GatewayError::field(
                d,
                "stream",
                "`stream` must be true or false",
            ));
        }
    };
    if stream && !api.can_stream() {
        return Err(GatewayError::field(
            d,
            "stream",
            format!("{} does not stream", api.path()),
        ));
    }
    if map.contains_key("stream_options") && !stream {
        return Err(GatewayError::field(
            d,
            "stream_options",
            "`stream_options` is only allowed when `stream` is true",
        ));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_kobo_cannot_carry_is_named() {
        let err = check(
            GatewayApi::OpenAiChat,
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"functions":[]}"#,
        )
        .expect_err("refused");
        assert_eq!(err.param.as_deref(), Some("functions"));
        assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn stream_defaults_follow_each_api() {
        let chat = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        assert!(!check(GatewayApi::OpenAiChat, chat).expect("ok").call.stream);
        assert!(check(GatewayApi::OllamaChat, chat).expect("ok").call.stream);
        let embed = br#"{"model":"m","input":"hi"}"#;
        assert!(
            !check(GatewayApi::OllamaEmbed, embed)
                .expect("ok")
                .call
                .stream
        );
        let err = check(
            GatewayApi::OpenAiEmbeddings,
            br#"{"model":"m","input":"x","stream":true}"#,
        )
        .expect_err("embeddings do not stream");
        assert_eq!(err.param.as_deref(), Some("stream"));
    }

    #[test]
    fn model_and_input_are_required() {
        let err = check(GatewayApi::OllamaGenerate, br#"{"prompt":"hi"}"#).expect_err("no model");
        assert_eq!(err.param.as_deref(), Some("model"));
        let err =
            check(GatewayApi::OpenAiChat, br#"{"model":"m","messages":[]}"#).expect_err("empty");
        assert_eq!(err.param.as_deref(), Some("messages"));
    }
}
