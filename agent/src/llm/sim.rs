//! The simulated backend: no server, a fixed latency, and text derived
//! deterministically from the request (same request, same text).

use std::time::{Duration, Instant};

use kobo_protocol::{LlmOutput, LlmRequest, Usage};

use super::{millis, word_count};

/// The model name when neither the request nor the agent names one.
pub(crate) const MODEL: &str = "sim";

/// The reply echoes at most this many words of the last user input.
const ECHO_WORDS: usize = 8;

pub(crate) async fn run(latency: Duration, model: String, request: &LlmRequest) -> LlmOutput {
    let started = Instant::now();
    // Cancel-safe: dropping the future drops the timer.
    tokio::time::sleep(latency).await;
    let input = input_text(request);
    let text = reply_text(request, &input);
    let elapsed = started.elapsed();
    LlmOutput {
        usage: Usage {
            prompt_tokens: word_count(&input),
            completion_tokens: word_count(&text),
            duration_ms: millis(elapsed),
            first_token_ms: Some(millis(elapsed)),
            load_ms: None,
        },
        text,
        model,
    }
}

/// Everything the model would read, in order.
fn input_text(request: &LlmRequest) -> String {
    let mut parts: Vec<&str> = request.system.iter().map(String::as_str).collect();
    match &request.messages {
        Some(messages) => parts.extend(messages.iter().map(|m| m.content.as_str())),
        None => parts.extend(request.prompt.as_deref()),
    }
    parts.join("\n")
}

/// `[sim] <echo of the last input> #<hash of the whole request>`, cut to
/// `max_tokens` words when set.
fn reply_text(request: &LlmRequest, input: &str) -> String {
    let last = match &request.messages {
        Some(messages) => messages.last().map(|m| m.content.as_str()),
        None => request.prompt.as_deref(),
    }
    .unwrap_or_default();
    let mut hashed = input.to_owned();
    if let Some(model) = &request.model {
        hashed.push('\n');
        hashed.push_str(model);
    }
    let mut words = vec!["[sim]".to_owned()];
    words.extend(last.split_whitespace().take(ECHO_WORDS).map(str::to_owned));
    words.push(format!("#{:016x}", fnv1a(hashed.as_bytes())));
    if let Some(max) = request.options.as_ref().and_then(|o| o.max_tokens) {
        words.truncate(usize::try_from(max).unwrap_or(usize::MAX).max(1));
    }
    words.join(" ")
}

/// FNV-1a, 64 bits: stable across runs and platforms, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use kobo_protocol::{ChatMessage, GenerationOptions, Role};

    use super::*;

    fn prompt(text: &str) -> LlmRequest {
        LlmRequest {
            prompt: Some(text.into()),
            ..LlmRequest::default()
        }
    }

    #[tokio::test]
    async fn same_request_same_text_and_counts() {
        let request = prompt("tell me about the sea");
        let a = run(Duration::ZERO, "sim".into(), &request).await;
        let b = run(Duration::ZERO, "sim".into(), &request).await;
        assert_eq!(a.text, b.text);
        assert_eq!(a.usage.prompt_tokens, 5);
        assert_eq!(a.usage.completion_tokens, word_count(&a.text));
        assert!(
            a.text.starts_with("[sim] tell me about the sea #"),
            "{}",
            a.text
        );
        assert_eq!(a.model, "sim");
    }

    #[test]
    fn different_requests_differ() {
        let a = prompt("one");
        let b = prompt("two");
        assert_ne!(
            reply_text(&a, &input_text(&a)),
            reply_text(&b, &input_text(&b))
        );
    }

    #[test]
    fn known_hash() {
        // FNV-1a test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn chat_echoes_the_last_message_and_counts_all_input() {
        let request = LlmRequest {
            system: Some("be brief".into()),
            messages: Some(vec![
                ChatMessage {
                    role: Role::User,
                    content: "first question".into(),
                },
                ChatMessage {
                    role: Role::User,
                    content: "second one".into(),
                },
            ]),
            ..LlmRequest::default()
        };
        let input = input_text(&request);
        assert_eq!(word_count(&input), 6);
        assert!(reply_text(&request, &input).starts_with("[sim] second one #"));
    }

    #[test]
    fn max_tokens_cuts_the_reply() {
        let mut request = prompt("a b c d e f g h i j");
        request.options = Some(GenerationOptions {
            max_tokens: Some(3),
            ..GenerationOptions::default()
        });
        assert_eq!(reply_text(&request, &input_text(&request)), "[sim] a b");
    }
}
