//! Continuing a streamed gateway answer on another node after the node
//! answering it died mid-stream: what the broken stream had said
//! ([`said`]), whether a call can be continued at all
//! ([`GatewayCall::continuable`]), and the body the next attempt sends its
//! backend ([`GatewayCall::backend_body`]): the text so far as an assistant
//! prefix (chat), or appended to a raw prompt (legacy completions, Ollama
//! `raw` generate), with the token cap reduced by what was already sent.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::framing::{LineDecoder, SseDecoder};
use crate::{GatewayApi, GatewayCall};

/// What earlier attempts of a streamed call already sent the client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    /// The answer's text so far.
    pub text: String,
    /// Frames that carried text: one token each on the servers kobo
    /// fronts (Ollama, llama.cpp, vLLM stream a token per frame).
    pub tokens: u64,
}

/// What a stream's bytes said, its unfinished last frame left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Said {
    pub resume: Resume,
    /// Why the stream cannot be continued from its text alone (tool calls
    /// or reasoning were streamed, several choices, an unreadable frame).
    pub blocker: Option<String>,
    /// The stream's end marker came (`[DONE]`, `done: true`).
    pub ended: bool,
}

/// Frames are short; a longer one is unreadable here, which only blocks a
/// continuation.
const MAX_FRAME_BYTES: usize = 1 << 20;

/// Reads what `bytes`, a stream of `api` in its own framing, said.
pub fn said(api: GatewayApi, bytes: &[u8]) -> Said {
    let mut out = Said::default();
    if api.is_ollama() {
        match LineDecoder::new(MAX_FRAME_BYTES).push(bytes) {
            Ok(lines) => lines
                .iter()
                .for_each(|line| ollama_line(api, line, &mut out)),
            Err(err) => block(&mut out, err.to_string()),
        }
    } else {
        match SseDecoder::new(MAX_FRAME_BYTES).push(bytes) {
            Ok(events) => events
                .iter()
                .for_each(|event| openai_event(api, &event.data, &mut out)),
            Err(err) => block(&mut out, err.to_string()),
        }
    }
    out
}

fn block(out: &mut Said, why: impl Into<String>) {
    out.blocker.get_or_insert_with(|| why.into());
}

fn add_text(out: &mut Said, text: Option<&str>) {
    if let Some(text) = text.filter(|t| !t.is_empty()) {
        out.resume.text.push_str(text);
        out.resume.tokens += 1;
    }
}

fn is_present(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(items)) => !items.is_empty(),
        Some(_) => true,
    }
}

fn openai_event(api: GatewayApi, data: &str, out: &mut Said) {
    if data.trim() == "[DONE]" {
        out.ended = true;
        return;
    }
    let Ok(chunk) = serde_json::from_str::<Value>(data) else {
        return block(out, "a frame of the stream was not JSON");
    };
    for choice in chunk["choices"].as_array().into_iter().flatten() {
        if choice["index"].as_u64().unwrap_or(0) != 0 {
            block(out, "several choices were streamed");
            continue;
        }
        if api == GatewayApi::OpenAiCompletions {
            add_text(out, choice["text"].as_str());
            continue;
        }
        let delta = &choice["delta"];
        if is_present(delta.get("tool_calls")) || is_present(delta.get("function_call")) {
            block(out, "tool calls were streamed");
        }
        if is_present(delta.get("reasoning_content")) || is_present(delta.get("reasoning")) {
            block(out, "reasoning was streamed");
        }
        add_text(out, delta["content"].as_str());
    }
}

fn ollama_line(api: GatewayApi, line: &str, out: &mut Said) {
    let Ok(part) = serde_json::from_str::<Value>(line) else {
        return block(out, "a line of the stream was not JSON");
    };
    if is_present(part.get("error")) {
        block(out, "the stream carried an error");
    }
    if part["done"].as_bool() == Some(true) {
        out.ended = true;
    }
    let (text, thinking) = if api == GatewayApi::OllamaGenerate {
        (part["response"].as_str(), part.get("thinking"))
    } else {
        let message = &part["message"];
        if is_present(message.get("tool_calls")) {
            block(out, "tool calls were streamed");
        }
        (message["content"].as_str(), message.get("thinking"))
    };
    if is_present(thinking) {
        block(out, "thinking was streamed");
    }
    add_text(out, text);
}

/// Where a continuation puts the text so far.
enum Continuation {
    /// As a last assistant message, which the model continues.
    AssistantPrefix,
    /// Appended to the raw prompt.
    RawPrompt,
}

/// The token-cap fields of each API's body.
const CAPS: [&str; 3] = [
    "/max_tokens",
    "/max_completion_tokens",
    "/options/num_predict",
];

impl GatewayCall {
    fn continuation(&self) -> Result<Continuation, String> {
        let body = &self.body;
        let several = ["n", "best_of"]
            .iter()
            .any(|field| body[field].as_u64().is_some_and(|n| n > 1));
        if several {
            return Err("the call asked for several choices".into());
        }
        match self.api {
            GatewayApi::OpenAiChat | GatewayApi::OllamaChat => Ok(Continuation::AssistantPrefix),
            GatewayApi::OpenAiCompletions if body["echo"].as_bool() == Some(true) => {
                Err("the call asked for its prompt echoed".into())
            }
            GatewayApi::OpenAiCompletions => match &body["prompt"] {
                Value::String(_) => Ok(Continuation::RawPrompt),
                Value::Array(items) if items.len() == 1 && items[0].is_string() => {
                    Ok(Continuation::RawPrompt)
                }
                _ => Err("the prompt is not one string".into()),
            },
            GatewayApi::OllamaGenerate if body["raw"].as_bool() == Some(true) => {
                Ok(Continuation::RawPrompt)
            }
            GatewayApi::OllamaGenerate => Err(
                "a templated /api/generate prompt cannot be continued (send `raw: true` to allow it)"
                    .into(),
            ),
            GatewayApi::OpenAiEmbeddings | GatewayApi::OllamaEmbed | GatewayApi::OllamaEmbeddings => {
                Err("embeddings do not stream".into())
            }
        }
    }

    /// Whether a broken stream of this call can go on from its text on
    /// another node; else why not.
    pub fn continuable(&self) -> Result<(), String> {
        self.continuation().map(|_| ())
    }

    /// The body to post to the backend: the client's, or, when resuming,
    /// the client's with the text so far in it and the token cap lowered by
    /// what was already sent.
    pub fn backend_body(&self) -> Result<std::borrow::Cow<'_, Value>, String> {
        let Some(resume) = &self.resume else {
            return Ok(std::borrow::Cow::Borrowed(&self.body));
        };
        let mut body = self.body.clone();
        match self.continuation()? {
            Continuation::AssistantPrefix => {
                let Some(messages) = body.get_mut("messages").and_then(Value::as_array_mut) else {
                    return Err("the call has no `messages` to continue".into());
                };
                messages.push(serde_json::json!({"role": "assistant", "content": resume.text}));
            }
            Continuation::RawPrompt => {
                let prompt = match body.get_mut("prompt") {
                    Some(Value::Array(items)) => items.get_mut(0),
                    other => other,
                };
                let Some(Value::String(prompt)) = prompt else {
                    return Err("the call has no `prompt` to continue".into());
                };
                prompt.push_str(&resume.text);
            }
        }
        for cap in CAPS {
            if let Some(slot) = body.pointer_mut(cap)
                && let Some(left) = slot.as_u64()
            {
                *slot = Value::from(left.saturating_sub(resume.tokens).max(1));
            }
        }
        Ok(std::borrow::Cow::Owned(body))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn call(api: GatewayApi, body: Value, resume: Option<(&str, u64)>) -> GatewayCall {
        GatewayCall {
            api,
            body,
            stream: true,
            resume: resume.map(|(text, tokens)| Resume {
                text: text.into(),
                tokens,
            }),
        }
    }

    #[test]
    fn a_broken_openai_stream_says_its_text_and_leaves_the_unfinished_frame_out() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" cut"
        );
        let said = said(GatewayApi::OpenAiChat, stream.as_bytes());
        assert_eq!(said.resume.text, "Hello world");
        assert_eq!(said.resume.tokens, 2);
        assert_eq!(said.blocker, None);
        assert!(!said.ended);

        let tools =
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n";
        assert_eq!(
            super::said(GatewayApi::OpenAiChat, tools.as_bytes())
                .blocker
                .as_deref(),
            Some("tool calls were streamed")
        );
        let legacy = "data: {\"choices\":[{\"index\":0,\"text\":\"abc\"}]}\n\ndata: [DONE]\n\n";
        let said = super::said(GatewayApi::OpenAiCompletions, legacy.as_bytes());
        assert_eq!((said.resume.text.as_str(), said.ended), ("abc", true));
    }

    #[test]
    fn a_broken_ollama_stream_says_its_text_and_thinking_blocks_it() {
        let stream = "{\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n\
                      {\"message\":{\"role\":\"assistant\",\"content\":\" there\"},\"done\":false}\n";
        let said = said(GatewayApi::OllamaChat, stream.as_bytes());
        assert_eq!(
            (said.resume.text.as_str(), said.resume.tokens),
            ("Hi there", 2)
        );
        let thinking = "{\"response\":\"\",\"thinking\":\"hmm\",\"done\":false}\n";
        assert_eq!(
            super::said(GatewayApi::OllamaGenerate, thinking.as_bytes())
                .blocker
                .as_deref(),
            Some("thinking was streamed")
        );
    }

    #[test]
    fn a_continued_call_carries_the_text_and_a_lower_cap() {
        let chat = call(
            GatewayApi::OpenAiChat,
            json!({"model": "m", "messages": [{"role": "user", "content": "q"}], "max_tokens": 10}),
            Some(("Hello world", 2)),
        );
        let body = chat.backend_body().expect("continuable");
        assert_eq!(
            body["messages"][1],
            json!({"role": "assistant", "content": "Hello world"})
        );
        assert_eq!(body["max_tokens"], 8);

        let raw = call(
            GatewayApi::OllamaGenerate,
            json!({"model": "m", "prompt": "[INST] q [/INST]", "raw": true, "options": {"num_predict": 2}}),
            Some((" A", 5)),
        );
        let body = raw.backend_body().expect("continuable");
        assert_eq!(body["prompt"], "[INST] q [/INST] A");
        assert_eq!(body["options"]["num_predict"], 1, "never below one");

        let plain = call(GatewayApi::OpenAiChat, json!({"messages": []}), None);
        assert_eq!(
            plain.backend_body().expect("as sent").into_owned(),
            plain.body
        );
    }

    #[test]
    fn calls_that_cannot_continue_say_why() {
        let templated = call(GatewayApi::OllamaGenerate, json!({"prompt": "q"}), None);
        assert!(
            templated
                .continuable()
                .expect_err("templated")
                .contains("raw")
        );
        let several = call(
            GatewayApi::OpenAiChat,
            json!({"messages": [], "n": 2}),
            None,
        );
        assert!(several.continuable().is_err());
        let echo = call(
            GatewayApi::OpenAiCompletions,
            json!({"prompt": "q", "echo": true}),
            None,
        );
        assert!(echo.continuable().is_err());
        let list = call(
            GatewayApi::OpenAiCompletions,
            json!({"prompt": ["a", "b"]}),
            None,
        );
        assert!(list.continuable().is_err());
        assert!(
            call(
                GatewayApi::OpenAiCompletions,
                json!({"prompt": ["a"]}),
                None
            )
            .continuable()
            .is_ok()
        );
    }
}
