//! OpenAI-compatible servers (vLLM, llama.cpp, TGI, Ollama's `/v1`):
//! `/v1/chat/completions` streamed as server-sent events, `/v1/models`.

use std::time::{Duration, Instant};

use kobo_protocol::{LlmOutput, LlmRequest, Usage};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Http, LlmError, MAX_LINE_BYTES, clip, json_error_message, millis};
use kobo_protocol::framing::{SseDecoder, SseEvent};

/// Where vLLM listens unless told otherwise.
pub(crate) const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8000";

const NAME: &str = "openai";

/// One `data:` payload of the stream.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Chunk {
    model: Option<String>,
    choices: Vec<Choice>,
    usage: Option<ChunkUsage>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Choice {
    delta: Option<Delta>,
    /// `/v1/completions` text (the gateway's calls; chat has `delta`).
    text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Delta {
    content: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ChunkUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[derive(Debug, Deserialize)]
struct ModelList {
    #[serde(default)]
    data: Vec<ModelEntry>,
}

#[derive(Debug, Deserialize)]
struct ModelEntry {
    id: String,
}

pub(crate) async fn list_models(http: &Http) -> Result<Vec<String>, LlmError> {
    let list: ModelList = http.get_json("/v1/models").await?;
    Ok(list.data.into_iter().map(|m| m.id).collect())
}

fn request_body(model: &str, request: &LlmRequest) -> Value {
    let system = request
        .system
        .iter()
        .map(|content| json!({"role": "system", "content": content}));
    let messages: Vec<Value> = match &request.messages {
        Some(messages) => system
            .chain(
                messages
                    .iter()
                    .map(|m| json!({"role": m.role.as_str(), "content": m.content})),
            )
            .collect(),
        None => system
            .chain(std::iter::once(json!({
                "role": "user",
                "content": request.prompt.as_deref().unwrap_or_default(),
            })))
            .collect(),
    };
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    if let Some(options) = &request.options {
        if let Some(t) = options.temperature {
            body.insert("temperature".into(), json!(t));
        }
        if let Some(p) = options.top_p {
            body.insert("top_p".into(), json!(p));
        }
        if let Some(n) = options.max_tokens {
            body.insert("max_tokens".into(), json!(n));
        }
        if let Some(seed) = options.seed {
            body.insert("seed".into(), json!(seed));
        }
        if !options.stop.is_empty() {
            body.insert("stop".into(), json!(options.stop));
        }
    }
    if let Some(format) = &request.format {
        body.insert("response_format".into(), response_format(format));
    }
    Value::Object(body)
}

/// `"json"` asks for any JSON object; an object is a JSON schema.
fn response_format(format: &Value) -> Value {
    match format {
        Value::String(s) if s == "json" => json!({"type": "json_object"}),
        schema => json!({
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema},
        }),
    }
}

pub(crate) async fn run(
    http: &Http,
    model: &str,
    request: &LlmRequest,
) -> Result<LlmOutput, LlmError> {
    let started = Instant::now();
    let body = request_body(model, request);
    let builder = http
        .client
        .post(http.url("/v1/chat/completions"))
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .json(&body);
    let mut response = http.send(builder).await?;
    let mut reply = Reply::new(model);
    let mut decoder = SseDecoder::new(MAX_LINE_BYTES);
    let too_long = |err| LlmError::permanent(format!("{NAME}: {err}"));
    while let Some(chunk) = http.next_chunk(&mut response).await? {
        for event in decoder.push(&chunk).map_err(too_long)? {
            if let Some(output) = reply.event(&event, started.elapsed())? {
                return Ok(output);
            }
        }
    }
    reply.end(&mut decoder, started.elapsed())
}

/// What the stream said so far.
#[derive(Debug)]
pub(crate) struct Reply {
    model: Option<String>,
    requested_model: String,
    text: String,
    first_token: Option<Duration>,
    content_chunks: u64,
    usage: Option<ChunkUsage>,
    events: u64,
}

impl Reply {
    pub(crate) fn new(requested_model: &str) -> Self {
        Reply {
            model: None,
            requested_model: requested_model.to_owned(),
            text: String::new(),
            first_token: None,
            content_chunks: 0,
            usage: None,
            events: 0,
        }
    }

    /// Takes one event; the output once `[DONE]` arrives.
    pub(crate) fn event(
        &mut self,
        event: &SseEvent,
        elapsed: Duration,
    ) -> Result<Option<LlmOutput>, LlmError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            return Ok(Some(self.output(elapsed)));
        }
        let value: Value = serde_json::from_str(data).map_err(|err| {
            LlmError::permanent(format!(
                "{NAME}: cannot parse a stream event: {err}: {}",
                clip(data)
            ))
        })?;
        self.events += 1;
        if is_error(&value) || event.event.as_deref() == Some("error") {
            return Err(midstream_error(&value));
        }
        let chunk: Chunk = serde_json::from_value(value).map_err(|err| {
            LlmError::permanent(format!(
                "{NAME}: unexpected stream event: {err}: {}",
                clip(data)
            ))
        })?;
        if self.model.is_none() {
            self.model = chunk.model.filter(|m| !m.is_empty());
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        let piece = chunk
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.delta.and_then(|d| d.content).or(c.text))
            .unwrap_or_default();
        if !piece.is_empty() {
            self.first_token.get_or_insert(elapsed);
            self.content_chunks += 1;
            self.text.push_str(&piece);
        }
        Ok(None)
    }

    fn output(&mut self, elapsed: Duration) -> LlmOutput {
        // Without a usage chunk (a server ignoring `include_usage`), each
        // content chunk is about one token.
        let (prompt_tokens, completion_tokens) = match &self.usage {
            Some(u) => (u.prompt_tokens, u.completion_tokens),
            None => (0, self.content_chunks),
        };
        LlmOutput {
            text: std::mem::take(&mut self.text),
            model: self
                .model
                .take()
                .unwrap_or_else(|| self.requested_model.clone()),
            usage: Usage {
                prompt_tokens,
                completion_tokens,
                duration_ms: millis(elapsed),
                first_token_ms: self.first_token.map(millis),
                load_ms: None,
            },
        }
    }

    /// The body ended: the output if its unterminated last event is
    /// `[DONE]`, else the error of a stream cut before it.
    pub(crate) fn end(
        &mut self,
        decoder: &mut SseDecoder,
        elapsed: Duration,
    ) -> Result<LlmOutput, LlmError> {
        let last = decoder
            .finish()
            .map_err(|err| LlmError::permanent(format!("{NAME}: {err}")))?;
        if let Some(event) = last {
            // A last event without its blank line may be `[DONE]`, or cut.
            match self.event(&event, elapsed) {
                Ok(Some(output)) => return Ok(output),
                Ok(None) => {}
                Err(err) if !err.retryable => return Err(self.cut(true)),
                Err(err) => return Err(err),
            }
        }
        Err(self.cut(false))
    }

    /// The stream ended without `[DONE]`.
    fn cut(&self, mid_event: bool) -> LlmError {
        let at = if mid_event {
            ", in the middle of an event"
        } else {
            ""
        };
        LlmError::retryable(format!(
            "{NAME}: stream ended before [DONE]{at} (after {} events)",
            self.events
        ))
    }
}

/// OpenAI `{"error":{...}}` or vLLM `{"object":"error",...}`.
fn is_error(value: &Value) -> bool {
    value.get("error").is_some_and(|e| !e.is_null())
        || value.get("object").and_then(Value::as_str) == Some("error")
}

/// An error sent inside a 200 stream. The server's `code`/`type` say
/// whether the request itself was at fault; otherwise the server failed
/// while generating, which another attempt may not.
fn midstream_error(value: &Value) -> LlmError {
    let message = json_error_message(value).unwrap_or_else(|| value.to_string());
    let error = match value.get("error") {
        Some(e @ Value::Object(_)) => e,
        _ => value,
    };
    let code = error.get("code");
    let kind = error
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let client_fault = match code.and_then(Value::as_u64) {
        Some(code) => (400..500).contains(&code) && code != 408 && code != 429,
        None => matches!(
            kind,
            "invalid_request_error" | "BadRequestError" | "NotFoundError" | "not_found_error"
        ),
    };
    let text = format!("{NAME}: error in stream: {}", clip(&message));
    if client_fault {
        LlmError::permanent(text)
    } else {
        LlmError::retryable(text)
    }
}

#[cfg(test)]
mod tests {
    use kobo_protocol::{ChatMessage, GenerationOptions, Role};

    use super::*;

    const STREAM: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"llama3.2:1b\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\r\n\r\n",
        ": ping\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"llama3.2:1b\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hé\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"llama3.2:1b\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"llo\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"llama3.2:1b\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"llama3.2:1b\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n",
        "data: [DONE]\n\n"
    );

    fn decode(chunks: &[&[u8]]) -> Result<LlmOutput, LlmError> {
        let mut reply = Reply::new("asked");
        let mut decoder = SseDecoder::new(1 << 20);
        for chunk in chunks {
            for event in decoder.push(chunk).expect("fits") {
                if let Some(output) = reply.event(&event, Duration::from_millis(3))? {
                    return Ok(output);
                }
            }
        }
        if let Some(event) = decoder.finish().expect("fits") {
            match reply.event(&event, Duration::from_millis(3)) {
                Ok(Some(output)) => return Ok(output),
                Ok(None) => {}
                Err(err) if !err.retryable => return Err(reply.cut(true)),
                Err(err) => return Err(err),
            }
        }
        Err(reply.cut(false))
    }

    fn expected() -> LlmOutput {
        LlmOutput {
            text: "Héllo".into(),
            model: "llama3.2:1b".into(),
            usage: Usage {
                prompt_tokens: 9,
                completion_tokens: 2,
                duration_ms: 3,
                first_token_ms: Some(3),
                load_ms: None,
            },
        }
    }

    #[test]
    fn stream_split_at_every_byte_position() {
        let bytes = STREAM.as_bytes();
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            let output = decode(&[a, b]).unwrap_or_else(|e| panic!("split at {at}: {e}"));
            assert_eq!(output, expected(), "split at {at}");
        }
    }

    #[test]
    fn stream_cut_anywhere_before_done_is_retryable() {
        let bytes = STREAM.as_bytes();
        let done_at = STREAM.rfind("data: [DONE]").expect("done");
        for at in 0..done_at + "data: [DONE".len() {
            let err = decode(&[&bytes[..at]]).expect_err("cut");
            assert!(err.retryable, "cut at {at}: {err}");
            assert!(err.message.contains("stream ended before [DONE]"), "{err}");
        }
    }

    #[test]
    fn missing_usage_counts_content_chunks() {
        let stream = concat!(
            "data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n",
            "data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}]}\n\n",
            "data: [DONE]\n\n"
        );
        let output = decode(&[stream.as_bytes()]).expect("complete");
        assert_eq!(output.text, "ab");
        assert_eq!(output.usage.completion_tokens, 2);
        assert_eq!(output.usage.prompt_tokens, 0);
    }

    #[test]
    fn midstream_errors_in_both_shapes() {
        let openai = concat!(
            "data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n",
            "data: {\"error\":{\"message\":\"engine died\",\"type\":\"InternalServerError\",\"code\":500}}\n\n",
            "data: [DONE]\n\n"
        );
        let err = decode(&[openai.as_bytes()]).expect_err("error event");
        assert!(err.retryable);
        assert_eq!(err.message, "openai: error in stream: engine died");

        let vllm = "data: {\"object\":\"error\",\"message\":\"prompt too long\",\"type\":\"BadRequestError\",\"code\":400}\n\n";
        let err = decode(&[vllm.as_bytes()]).expect_err("error event");
        assert!(!err.retryable);
        assert_eq!(err.message, "openai: error in stream: prompt too long");

        let typed = "data: {\"error\":{\"message\":\"bad\",\"type\":\"invalid_request_error\",\"code\":null}}\n\n";
        assert!(!decode(&[typed.as_bytes()]).expect_err("error").retryable);
    }

    #[test]
    fn garbage_event_is_not_retryable() {
        let err = decode(&[b"data: <html>\n\n"]).expect_err("garbage");
        assert!(!err.retryable);
        assert!(err.message.contains("cannot parse a stream event"), "{err}");
    }

    #[test]
    fn body_from_prompt_with_options_and_schema() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let request = LlmRequest {
            prompt: Some("hi".into()),
            system: Some("sys".into()),
            options: Some(GenerationOptions {
                temperature: Some(0.0),
                top_p: None,
                max_tokens: Some(5),
                seed: Some(1),
                stop: vec!["x".into()],
            }),
            format: Some(schema.clone()),
            ..LlmRequest::default()
        };
        assert_eq!(
            request_body("m", &request),
            json!({
                "model": "m",
                "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
                "stream": true,
                "stream_options": {"include_usage": true},
                "temperature": 0.0, "max_tokens": 5, "seed": 1, "stop": ["x"],
                "response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
            })
        );
    }

    #[test]
    fn body_from_messages_with_json_format() {
        let request = LlmRequest {
            messages: Some(vec![
                ChatMessage {
                    role: Role::User,
                    content: "q".into(),
                },
                ChatMessage {
                    role: Role::Assistant,
                    content: "a".into(),
                },
            ]),
            format: Some(json!("json")),
            ..LlmRequest::default()
        };
        let body = request_body("m", &request);
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
        );
        assert_eq!(body["response_format"], json!({"type": "json_object"}));
    }
}
