//! The final output of a gateway call, read from the backend's answer as it
//! streams past: OpenAI SSE chunks, Ollama NDJSON lines, or one JSON
//! document. A stream that stops before its end marker is a failure.

use std::time::Duration;

use kobo_protocol::{GatewayApi, LlmOutput, Usage};
use serde_json::Value;

use super::{LlmError, MAX_LINE_BYTES, MAX_REPLY_BYTES, clip, json_error_message, millis};
use super::{ollama, openai};
use kobo_protocol::framing::LineDecoder;
use kobo_protocol::framing::SseDecoder;

/// Reads an answer's output from its bytes, which the caller passes on
/// untouched. Streams reuse the backends' own stream readers.
pub(crate) struct OutputExtractor {
    name: &'static str,
    form: Form,
}

enum Form {
    /// OpenAI `/v1/chat/completions` or `/v1/completions`, streamed.
    Sse {
        decoder: SseDecoder,
        reply: openai::Reply,
    },
    /// Ollama `/api/chat` or `/api/generate`, streamed.
    Ndjson {
        decoder: LineDecoder,
        reply: ollama::Reply,
    },
    /// Any non-streamed answer: read whole at its end.
    Json {
        api: GatewayApi,
        body: Vec<u8>,
        requested_model: String,
    },
}

impl OutputExtractor {
    /// `name` names the backend in errors; `requested_model` is the model
    /// when the answer names none.
    pub(crate) fn new(
        name: &'static str,
        api: GatewayApi,
        stream: bool,
        requested_model: &str,
    ) -> Self {
        let form = match (stream && api.can_stream(), api.is_ollama()) {
            (true, false) => Form::Sse {
                decoder: SseDecoder::new(MAX_LINE_BYTES),
                reply: openai::Reply::new(requested_model),
            },
            (true, true) => Form::Ndjson {
                decoder: LineDecoder::new(MAX_LINE_BYTES),
                reply: ollama::Reply::new(requested_model),
            },
            (false, _) => Form::Json {
                api,
                body: Vec::new(),
                requested_model: requested_model.to_owned(),
            },
        };
        OutputExtractor { name, form }
    }

    /// Takes the next chunk; the output once the stream's end marker
    /// (`data: [DONE]`, a line with `"done": true`) arrived in it.
    pub(crate) fn push(
        &mut self,
        chunk: &[u8],
        elapsed: Duration,
    ) -> Result<Option<LlmOutput>, LlmError> {
        let name = self.name;
        let too_long = |err| LlmError::permanent(format!("{name}: {err}"));
        match &mut self.form {
            Form::Sse { decoder, reply } => {
                for event in decoder.push(chunk).map_err(too_long)? {
                    if let Some(output) = reply.event(&event, elapsed)? {
                        return Ok(Some(output));
                    }
                }
                Ok(None)
            }
            Form::Ndjson { decoder, reply } => {
                for line in decoder.push(chunk).map_err(too_long)? {
                    if let Some(output) = reply.line(&line, elapsed)? {
                        return Ok(Some(output));
                    }
                }
                Ok(None)
            }
            Form::Json { body, .. } => {
                if body.len() + chunk.len() > MAX_REPLY_BYTES {
                    return Err(LlmError::permanent(format!(
                        "{name}: reply longer than {MAX_REPLY_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(chunk);
                Ok(None)
            }
        }
    }

    /// The body ended: a whole JSON answer's output, or a stream's when its
    /// unterminated last frame is the end marker; else a cut stream's error.
    pub(crate) fn finish(self, elapsed: Duration) -> Result<LlmOutput, LlmError> {
        match self.form {
            Form::Sse {
                mut decoder,
                mut reply,
            } => reply.end(&mut decoder, elapsed),
            Form::Ndjson { mut decoder, reply } => reply.end(decoder.finish(), elapsed),
            Form::Json {
                api,
                body,
                requested_model,
            } => json_output(self.name, api, &body, &requested_model, elapsed),
        }
    }
}

/// The output of a non-streamed answer.
fn json_output(
    name: &str,
    api: GatewayApi,
    body: &[u8],
    requested_model: &str,
    elapsed: Duration,
) -> Result<LlmOutput, LlmError> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        if err.is_eof() {
            LlmError::retryable(format!(
                "{name}: the reply ended in the middle of its JSON document (after {} bytes)",
                body.len()
            ))
        } else {
            LlmError::permanent(format!(
                "{name}: cannot parse the reply: {err}: {}",
                clip(&String::from_utf8_lossy(body))
            ))
        }
    })?;
    if value.get("error").is_some_and(|e| !e.is_null())
        || value.get("object").and_then(Value::as_str) == Some("error")
    {
        let message = json_error_message(&value).unwrap_or_else(|| value.to_string());
        return Err(LlmError::permanent(format!(
            "{name}: error in a 2xx reply: {}",
            clip(&message)
        )));
    }
    let model = value
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or(requested_model)
        .to_owned();
    let count = |value: &Value, field: &str| value.get(field).and_then(Value::as_u64);
    let mut output = LlmOutput {
        text: String::new(),
        model,
        usage: Usage {
            prompt_tokens: 0,
            completion_tokens: 0,
            duration_ms: millis(elapsed),
            first_token_ms: None,
            load_ms: None,
        },
    };
    match api {
        GatewayApi::OllamaChat | GatewayApi::OllamaGenerate => {
            // One line of the stream, `done: true` included.
            let mut reply = ollama::Reply::new(requested_model);
            let text = String::from_utf8_lossy(body);
            output = match reply.line(&text, elapsed)? {
                Some(output) => output,
                None => reply.end(None, elapsed)?,
            };
            output.usage.first_token_ms = None;
        }
        GatewayApi::OllamaEmbed | GatewayApi::OllamaEmbeddings => {
            output.usage.prompt_tokens = count(&value, "prompt_eval_count").unwrap_or(0);
            output.usage.load_ms = count(&value, "load_duration").map(|ns| ns / 1_000_000);
        }
        GatewayApi::OpenAiChat | GatewayApi::OpenAiCompletions | GatewayApi::OpenAiEmbeddings => {
            let choice = &value["choices"][0];
            output.text = choice["message"]["content"]
                .as_str()
                .or_else(|| choice["text"].as_str())
                .unwrap_or_default()
                .to_owned();
            let usage = &value["usage"];
            output.usage.prompt_tokens = count(usage, "prompt_tokens").unwrap_or(0);
            output.usage.completion_tokens = count(usage, "completion_tokens").unwrap_or(0);
        }
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::llm::fuzzing::reply_output as extract;

    fn usage(prompt_tokens: u64, completion_tokens: u64, first_token: bool) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            duration_ms: 4,
            first_token_ms: first_token.then_some(4),
            load_ms: None,
        }
    }

    const CHAT_SSE: &str = concat!(
        "data: {\"model\":\"m1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hé\"}}]}\n\n",
        "data: {\"model\":\"m1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"llo\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"model\":\"m1\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n"
    );

    const COMPLETIONS_SSE: &str = concat!(
        "data: {\"model\":\"m1\",\"choices\":[{\"index\":0,\"text\":\"one \"}]}\n\n",
        "data: {\"model\":\"m1\",\"choices\":[{\"index\":0,\"text\":\"two\",\"finish_reason\":\"length\"}]}\n\n",
        "data: [DONE]\n\n"
    );

    const CHAT_NDJSON: &str = concat!(
        "{\"model\":\"m2\",\"message\":{\"role\":\"assistant\",\"content\":\"Hé\"},\"done\":false}\n",
        "{\"model\":\"m2\",\"message\":{\"role\":\"assistant\",\"content\":\"llo\"},\"done\":false}\n",
        "{\"model\":\"m2\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"prompt_eval_count\":6,\"eval_count\":2}\n"
    );

    const GENERATE_NDJSON: &str = concat!(
        "{\"model\":\"m2\",\"response\":\"a\",\"done\":false}\n",
        "{\"model\":\"m2\",\"response\":\"b\",\"done\":true,\"prompt_eval_count\":1,\"eval_count\":2}\n"
    );

    /// Every split of `stream` into two chunks gives `expected`; every cut
    /// before its end marker (`marker`) is a retryable failure.
    fn check_stream(api: GatewayApi, stream: &str, marker: &str, expected: &LlmOutput) {
        let bytes = stream.as_bytes();
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            let output = extract(api, true, &[a, b]).unwrap_or_else(|e| panic!("{at}: {e}"));
            assert_eq!(&output, expected, "{api:?} split at {at}");
        }
        let end_at = stream.rfind(marker).expect("marker") + marker.len() - 1;
        for at in 0..end_at {
            let err = extract(api, true, &[&bytes[..at]]).expect_err("cut");
            assert!(err.retryable, "{api:?} cut at {at}: {err}");
            assert!(err.message.contains("stream ended before"), "{err}");
        }
    }

    #[test]
    fn openai_streams_concatenate_deltas_or_texts() {
        let chat = LlmOutput {
            text: "Héllo".into(),
            model: "m1".into(),
            usage: usage(5, 2, true),
        };
        check_stream(GatewayApi::OpenAiChat, CHAT_SSE, "[DONE]", &chat);
        let completions = LlmOutput {
            text: "one two".into(),
            model: "m1".into(),
            // No usage chunk: one token per content chunk.
            usage: usage(0, 2, true),
        };
        check_stream(
            GatewayApi::OpenAiCompletions,
            COMPLETIONS_SSE,
            "[DONE]",
            &completions,
        );
    }

    #[test]
    fn ollama_streams_concatenate_messages_or_responses() {
        let chat = LlmOutput {
            text: "Héllo".into(),
            model: "m2".into(),
            usage: usage(6, 2, true),
        };
        check_stream(GatewayApi::OllamaChat, CHAT_NDJSON, "\"done\":true", &chat);
        let generate = LlmOutput {
            text: "ab".into(),
            model: "m2".into(),
            usage: usage(1, 2, true),
        };
        check_stream(
            GatewayApi::OllamaGenerate,
            GENERATE_NDJSON,
            "\"done\":true",
            &generate,
        );
    }

    #[test]
    fn an_error_event_fails_the_stream() {
        let stream = "data: {\"error\":{\"message\":\"engine died\",\"code\":500}}\n\n";
        let err = extract(GatewayApi::OpenAiChat, true, &[stream.as_bytes()]).expect_err("error");
        assert!(err.retryable);
        assert!(err.message.contains("engine died"), "{err}");
        let line = "{\"error\":\"out of memory\"}\n";
        let err = extract(GatewayApi::OllamaChat, true, &[line.as_bytes()]).expect_err("error");
        assert!(err.message.contains("out of memory"), "{err}");
    }

    #[test]
    fn whole_json_answers_of_every_api() {
        let cases: [(GatewayApi, &str, &str, u64, u64); 6] = [
            (
                GatewayApi::OpenAiChat,
                r#"{"model":"m1","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
                "hi",
                3,
                1,
            ),
            (
                GatewayApi::OpenAiCompletions,
                r#"{"model":"m1","choices":[{"index":0,"text":"yo"}],"usage":{"prompt_tokens":2,"completion_tokens":1}}"#,
                "yo",
                2,
                1,
            ),
            (
                GatewayApi::OpenAiEmbeddings,
                r#"{"object":"list","model":"m1","data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":4,"total_tokens":4}}"#,
                "",
                4,
                0,
            ),
            (
                GatewayApi::OllamaChat,
                r#"{"model":"m1","message":{"role":"assistant","content":"hey"},"done":true,"prompt_eval_count":5,"eval_count":1}"#,
                "hey",
                5,
                1,
            ),
            (
                GatewayApi::OllamaGenerate,
                r#"{"model":"m1","response":"ok","done":true,"prompt_eval_count":2,"eval_count":1}"#,
                "ok",
                2,
                1,
            ),
            (
                GatewayApi::OllamaEmbed,
                r#"{"model":"m1","embeddings":[[0.1]],"prompt_eval_count":7}"#,
                "",
                7,
                0,
            ),
        ];
        for (api, body, text, prompt_tokens, completion_tokens) in cases {
            let (a, b) = body.as_bytes().split_at(body.len() / 2);
            let output = extract(api, false, &[a, b]).unwrap_or_else(|e| panic!("{api:?}: {e}"));
            let expected = LlmOutput {
                text: text.into(),
                model: "m1".into(),
                usage: usage(prompt_tokens, completion_tokens, false),
            };
            assert_eq!(output, expected, "{api:?}");
            let err = extract(api, false, &[a]).expect_err("cut document");
            assert!(err.retryable, "{api:?}: {err}");
        }
    }

    #[test]
    fn a_bad_or_error_document_is_permanent() {
        let err = extract(GatewayApi::OpenAiChat, false, &[b"<html>"]).expect_err("garbage");
        assert!(!err.retryable);
        assert!(err.message.contains("cannot parse the reply"), "{err}");
        let body = br#"{"error":{"message":"nope","type":"invalid_request_error"}}"#;
        let err = extract(GatewayApi::OpenAiChat, false, &[body]).expect_err("error");
        assert_eq!(err.message, "test: error in a 2xx reply: nope");
    }

    #[test]
    fn an_unfinished_ollama_document_is_a_cut() {
        let body = br#"{"model":"m1","response":"ok","done":false}"#;
        let err = extract(GatewayApi::OllamaGenerate, false, &[body]).expect_err("not done");
        assert!(err.retryable, "{err}");
    }
}
