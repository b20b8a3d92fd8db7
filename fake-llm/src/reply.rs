//! The reply: its deterministic tokens ([`reply_tokens`], [`reply_text`])
//! and the facts every wire format renders (counts, finish reason, the
//! tool call it may be).

use std::time::Instant;

use serde_json::Value;

use crate::generate::Api;

/// The words replies are made of.
const VOCAB: [&str; 24] = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "kobo",
    "runs",
    "jobs",
    "on",
    "many",
    "small",
    "nodes",
    "while",
    "tokens",
    "stream",
    "back",
    "to",
    "a",
    "busy",
    "coordinator",
    "today",
];

/// The tokens of a reply to `input` (the prompt, or the last message's
/// content): `count` words from a fixed vocabulary, chosen by a hash of the
/// input, each but the first with a leading space.
pub fn reply_tokens(input: &str, count: u32) -> Vec<String> {
    let mut state = fnv1a(input.as_bytes());
    (0..count)
        .map(|i| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let word = VOCAB[usize::try_from(state >> 33).unwrap_or(0) % VOCAB.len()];
            if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            }
        })
        .collect()
}

/// The whole reply text to `input` with `count` tokens.
pub fn reply_text(input: &str, count: u32) -> String {
    reply_tokens(input, count).concat()
}

/// FNV-1a, 64 bits: stable across runs and platforms.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One reply being built; streamed frames are rendered when sent, so their
/// timestamps and durations are true.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) id: u64,
    pub(crate) api: Api,
    pub(crate) model: String,
    pub(crate) prompt_tokens: u64,
    pub(crate) include_usage: bool,
    pub(crate) tokens: Vec<String>,
    /// The request's token cap cut the reply short.
    pub(crate) capped: bool,
    /// The reply calls a tool; `tokens` are then the pieces of its
    /// arguments' JSON.
    pub(crate) call: Option<ToolCall>,
    pub(crate) started: Instant,
}

/// A call of a tool the request offered.
#[derive(Debug)]
pub(crate) struct ToolCall {
    /// Makes the call's id.
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) arguments: Value,
}

impl ToolCall {
    /// OpenAI's `call_` and 24 characters.
    pub(crate) fn openai_id(&self) -> String {
        format!(
            "call_{}",
            base36(self.id.wrapping_mul(0x9e37_79b9_7f4a_7c15), 24)
        )
    }

    /// Ollama's `call_` and 8 characters.
    pub(crate) fn ollama_id(&self) -> String {
        format!(
            "call_{}",
            base36(self.id.wrapping_mul(0x2545_f491_4f6c_dd1d), 8)
        )
    }
}

/// `len` lowercase base-36 digits of a number stretched by hashing.
fn base36(seed: u64, len: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut state = fnv1a(&seed.to_le_bytes());
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from(DIGITS[usize::try_from(state >> 58).unwrap_or(0) % DIGITS.len()])
        })
        .collect()
}

impl Reply {
    /// The text; a tool call's arguments as a JSON string.
    pub(crate) fn text(&self) -> String {
        self.tokens.concat()
    }

    pub(crate) fn reason(&self) -> &'static str {
        match (&self.call, self.api.is_ollama()) {
            (Some(_), false) => "tool_calls",
            (Some(_), true) => "stop",
            (None, _) if self.capped => "length",
            (None, _) => "stop",
        }
    }

    pub(crate) fn completion_tokens(&self) -> u64 {
        self.tokens.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_deterministic_and_sized() {
        assert_eq!(reply_text("hello", 8), reply_text("hello", 8));
        assert_ne!(reply_text("hello", 8), reply_text("goodbye", 8));
        assert_eq!(reply_tokens("hello", 5).len(), 5);
        assert_eq!(reply_text("hello", 8).split_whitespace().count(), 8);
        assert_eq!(reply_text("x", 0), "");
    }
}
