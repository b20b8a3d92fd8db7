//! The Ollama native API: `/api/generate` and `/api/chat` streamed as
//! NDJSON, `/api/tags` and `/api/ps` for the model lists.

use std::time::{Duration, Instant};

use kobo_protocol::{ChatMessage, GenerationOptions, LlmOutput, LlmRequest, Usage};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Http, LlmError, MAX_LINE_BYTES, clip, millis};
use kobo_protocol::framing::LineDecoder;

/// Where Ollama listens unless told otherwise.
pub(crate) const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:11434";

const NAME: &str = "ollama";

/// One NDJSON line of a `/api/generate` or `/api/chat` reply.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Line {
    model: Option<String>,
    /// `/api/generate` text.
    response: Option<String>,
    /// `/api/chat` text.
    message: Option<LineMessage>,
    done: bool,
    error: Option<Value>,
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
    /// Nanoseconds.
    load_duration: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LineMessage {
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ModelList {
    #[serde(default)]
    models: Vec<ModelEntry>,
}

#[derive(Debug, Deserialize)]
struct ModelEntry {
    name: String,
}

pub(crate) async fn list_models(http: &Http) -> Result<Vec<String>, LlmError> {
    let list: ModelList = http.get_json("/api/tags").await?;
    Ok(list.models.into_iter().map(|m| m.name).collect())
}

pub(crate) async fn loaded_models(http: &Http) -> Result<Vec<String>, LlmError> {
    let list: ModelList = http.get_json("/api/ps").await?;
    Ok(list.models.into_iter().map(|m| m.name).collect())
}

/// The path and JSON body of the call: `/api/chat` when the request has
/// messages, `/api/generate` otherwise.
fn request_body(model: &str, request: &LlmRequest) -> (&'static str, Value) {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    let path = match &request.messages {
        Some(messages) => {
            let system = request
                .system
                .iter()
                .map(|content| json!({"role": "system", "content": content}));
            let rest = messages.iter().map(
                |ChatMessage { role, content }| json!({"role": role.as_str(), "content": content}),
            );
            body.insert(
                "messages".into(),
                Value::Array(system.chain(rest).collect()),
            );
            "/api/chat"
        }
        None => {
            body.insert(
                "prompt".into(),
                json!(request.prompt.as_deref().unwrap_or_default()),
            );
            if let Some(system) = &request.system {
                body.insert("system".into(), json!(system));
            }
            "/api/generate"
        }
    };
    body.insert("stream".into(), json!(true));
    if let Some(options) = request.options.as_ref().map(options_body)
        && !options.is_empty()
    {
        body.insert("options".into(), Value::Object(options));
    }
    if let Some(format) = &request.format {
        body.insert("format".into(), format.clone());
    }
    (path, Value::Object(body))
}

fn options_body(options: &GenerationOptions) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(t) = options.temperature {
        out.insert("temperature".into(), json!(t));
    }
    if let Some(p) = options.top_p {
        out.insert("top_p".into(), json!(p));
    }
    if let Some(seed) = options.seed {
        out.insert("seed".into(), json!(seed));
    }
    if !options.stop.is_empty() {
        out.insert("stop".into(), json!(options.stop));
    }
    if let Some(n) = options.max_tokens {
        out.insert("num_predict".into(), json!(n));
    }
    out
}

pub(crate) async fn run(
    http: &Http,
    model: &str,
    request: &LlmRequest,
) -> Result<LlmOutput, LlmError> {
    let started = Instant::now();
    let (path, body) = request_body(model, request);
    let mut response = http
        .send(http.client.post(http.url(path)).json(&body))
        .await?;
    let mut reply = Reply::new(model);
    let mut decoder = LineDecoder::new(MAX_LINE_BYTES);
    while let Some(chunk) = http.next_chunk(&mut response).await? {
        let lines = decoder
            .push(&chunk)
            .map_err(|err| LlmError::permanent(format!("{NAME}: {err}")))?;
        for line in lines {
            if let Some(output) = reply.line(&line, started.elapsed())? {
                return Ok(output);
            }
        }
    }
    reply.end(decoder.finish(), started.elapsed())
}

/// What the stream said so far.
#[derive(Debug)]
pub(crate) struct Reply {
    model: String,
    text: String,
    first_token: Option<Duration>,
    lines: u64,
}

impl Reply {
    pub(crate) fn new(requested_model: &str) -> Self {
        Reply {
            model: requested_model.to_owned(),
            text: String::new(),
            first_token: None,
            lines: 0,
        }
    }

    /// Takes one line; the output once the `done` line arrives.
    pub(crate) fn line(
        &mut self,
        line: &str,
        elapsed: Duration,
    ) -> Result<Option<LlmOutput>, LlmError> {
        let parsed: Line = serde_json::from_str(line).map_err(|err| {
            LlmError::permanent(format!(
                "{NAME}: cannot parse a reply line: {err}: {}",
                clip(line)
            ))
        })?;
        self.lines += 1;
        if let Some(error) = parsed.error {
            let message = match error {
                Value::String(message) => message,
                other => other.to_string(),
            };
            // The server failed while generating: a crashed runner, out of
            // memory. The request itself was accepted.
            return Err(LlmError::retryable(format!(
                "{NAME}: error during generation: {}",
                clip(&message)
            )));
        }
        if let Some(model) = parsed.model.filter(|m| !m.is_empty()) {
            self.model = model;
        }
        let piece = parsed
            .message
            .and_then(|m| m.content)
            .or(parsed.response)
            .unwrap_or_default();
        if !piece.is_empty() {
            self.first_token.get_or_insert(elapsed);
            self.text.push_str(&piece);
        }
        if !parsed.done {
            return Ok(None);
        }
        Ok(Some(LlmOutput {
            text: std::mem::take(&mut self.text),
            model: std::mem::take(&mut self.model),
            usage: Usage {
                prompt_tokens: parsed.prompt_eval_count.unwrap_or(0),
                completion_tokens: parsed.eval_count.unwrap_or(0),
                duration_ms: millis(elapsed),
                first_token_ms: self.first_token.map(millis),
                load_ms: parsed.load_duration.map(|ns| ns / 1_000_000),
            },
        }))
    }

    /// The body ended; `last` is an unterminated last line, if any.
    pub(crate) fn end(
        mut self,
        last: Option<String>,
        elapsed: Duration,
    ) -> Result<LlmOutput, LlmError> {
        if let Some(last) = last {
            match self.line(&last, elapsed) {
                Ok(Some(output)) => return Ok(output),
                Ok(None) => {}
                // A line cut in the middle is a cut stream, not bad JSON.
                Err(err) if !err.retryable => {
                    return Err(LlmError::retryable(format!(
                        "{NAME}: stream ended before done, in the middle of a line (after {} lines)",
                        self.lines
                    )));
                }
                Err(err) => return Err(err),
            }
        }
        Err(LlmError::retryable(format!(
            "{NAME}: stream ended before done (after {} lines)",
            self.lines
        )))
    }
}

#[cfg(test)]
mod tests {
    use kobo_protocol::Role;

    use super::*;

    const GENERATE: &str = concat!(
        r#"{"model":"qwen2.5:0.5b","created_at":"2024-01-01T00:00:00Z","response":"Hel","done":false}"#,
        "\n",
        r#"{"model":"qwen2.5:0.5b","created_at":"2024-01-01T00:00:00Z","response":"lo 日本","done":false}"#,
        "\n",
        r#"{"model":"qwen2.5:0.5b","created_at":"2024-01-01T00:00:00Z","response":"","done":true,"done_reason":"stop","context":[1,2],"total_duration":9000000,"load_duration":3500000,"prompt_eval_count":7,"prompt_eval_duration":1,"eval_count":2,"eval_duration":1}"#,
        "\n"
    );

    /// Feeds `chunks` through the decoder and the reply the way `run` does.
    fn decode(chunks: &[&[u8]]) -> Result<LlmOutput, LlmError> {
        let mut reply = Reply::new("asked");
        let mut decoder = LineDecoder::new(1 << 20);
        for chunk in chunks {
            for line in decoder.push(chunk).expect("line fits") {
                if let Some(output) = reply.line(&line, Duration::from_millis(5))? {
                    return Ok(output);
                }
            }
        }
        reply.end(decoder.finish(), Duration::from_millis(5))
    }

    fn expected() -> LlmOutput {
        LlmOutput {
            text: "Hello 日本".into(),
            model: "qwen2.5:0.5b".into(),
            usage: Usage {
                prompt_tokens: 7,
                completion_tokens: 2,
                duration_ms: 5,
                first_token_ms: Some(5),
                load_ms: Some(3),
            },
        }
    }

    #[test]
    fn stream_split_at_every_byte_position() {
        let bytes = GENERATE.as_bytes();
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            let output = decode(&[a, b]).unwrap_or_else(|e| panic!("split at {at}: {e}"));
            assert_eq!(output, expected(), "split at {at}");
        }
    }

    #[test]
    fn done_line_without_trailing_newline_completes() {
        let bytes = GENERATE.trim_end().as_bytes();
        assert_eq!(decode(&[bytes]).expect("complete"), expected());
    }

    #[test]
    fn stream_cut_anywhere_before_done_is_retryable() {
        let bytes = GENERATE.as_bytes();
        let done_line_start = GENERATE.trim_end().rfind('\n').expect("lines") + 1;
        // Cut anywhere before the done line's closing brace.
        for at in 0..GENERATE.trim_end().len() {
            let err = decode(&[&bytes[..at]]).expect_err("cut");
            assert!(err.retryable, "cut at {at}: {err}");
            assert!(err.message.contains("stream ended before done"), "{err}");
            if at > done_line_start + 1 {
                assert!(err.message.contains("middle of a line"), "{err}");
            }
        }
    }

    #[test]
    fn chat_lines_accumulate_message_content() {
        let stream = concat!(
            r#"{"model":"m","created_at":"x","message":{"role":"assistant","content":"Hi"},"done":false}"#,
            "\n",
            r#"{"model":"m","created_at":"x","message":{"role":"assistant","content":" there"},"done":false}"#,
            "\n",
            r#"{"model":"m","created_at":"x","message":{"role":"assistant","content":""},"done":true,"eval_count":2,"prompt_eval_count":4}"#,
            "\n"
        );
        let output = decode(&[stream.as_bytes()]).expect("complete");
        assert_eq!(output.text, "Hi there");
        assert_eq!(output.model, "m");
        assert_eq!(output.usage.prompt_tokens, 4);
        assert_eq!(output.usage.completion_tokens, 2);
        assert_eq!(output.usage.load_ms, None);
    }

    #[test]
    fn error_line_mid_stream_surfaces_its_message() {
        let stream = concat!(
            r#"{"model":"m","created_at":"x","response":"a","done":false}"#,
            "\n",
            r#"{"error":"llama runner process has terminated"}"#,
            "\n"
        );
        let err = decode(&[stream.as_bytes()]).expect_err("error line");
        assert!(err.retryable);
        assert_eq!(
            err.message,
            "ollama: error during generation: llama runner process has terminated"
        );
    }

    #[test]
    fn garbage_line_is_not_retryable() {
        let err = decode(&[b"<html>oops</html>\n"]).expect_err("garbage");
        assert!(!err.retryable);
        assert!(err.message.contains("cannot parse a reply line"), "{err}");
    }

    #[test]
    fn generate_body_maps_options_and_system() {
        let request = LlmRequest {
            prompt: Some("hi".into()),
            system: Some("be brief".into()),
            options: Some(GenerationOptions {
                temperature: Some(0.5),
                top_p: Some(0.9),
                max_tokens: Some(12),
                seed: Some(42),
                stop: vec!["\n".into()],
            }),
            format: Some(json!("json")),
            ..LlmRequest::default()
        };
        let (path, body) = request_body("m", &request);
        assert_eq!(path, "/api/generate");
        assert_eq!(
            body,
            json!({
                "model": "m", "prompt": "hi", "system": "be brief", "stream": true,
                "options": {"temperature": 0.5, "top_p": 0.9, "seed": 42, "stop": ["\n"], "num_predict": 12},
                "format": "json"
            })
        );
    }

    #[test]
    fn chat_body_puts_system_first() {
        let request = LlmRequest {
            messages: Some(vec![ChatMessage {
                role: Role::User,
                content: "hi".into(),
            }]),
            system: Some("be brief".into()),
            ..LlmRequest::default()
        };
        let (path, body) = request_body("m", &request);
        assert_eq!(path, "/api/chat");
        assert_eq!(
            body,
            json!({
                "model": "m",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "stream": true
            })
        );
    }
}
