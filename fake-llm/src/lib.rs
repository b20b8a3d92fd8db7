//! A fake LLM server for tests: speaks Ollama's native API and the OpenAI
//! API (chat and legacy completions, embeddings; streaming included) over
//! plain HTTP, with knobs for latency, token rate, errors, hangs, held
//! requests and cut streams.
//!
//! Endpoints: `/api/generate`, `/api/chat`, `/api/embed`,
//! `/api/embeddings`, `/api/show`, `/api/tags`, `/api/ps`, `/api/version`,
//! `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `/v1/models`, `/v1/models/{id}`; and for control from other processes
//! `GET|POST /_fake/behavior` and `GET /_fake/stats`.
//!
//! The reply text is deterministic: [`reply_text`] of the prompt (or of the
//! last message's content) with [`FakeBehavior::response_tokens`] tokens,
//! fewer when the request caps them (`num_predict`, `max_tokens`). The
//! prompt token count is the number of whitespace-separated words of all the
//! input (system, prompt, every message).
//!
//! A chat request that offers `tools` is answered with a call of the first
//! (or the one `tool_choice` names) with [`tool_arguments`] built from its
//! parameters' schema, unless `tool_choice` is `"none"` or the last message
//! is a tool's result. A request for JSON (Ollama's `format`, OpenAI's
//! `response_format` `json_object`/`json_schema`) is answered with
//! [`json_reply`] of the reply text. Embeddings are [`embedding`]s of each
//! input, [`EMBEDDING_DIMS`] long unless the request sets `dimensions`.
//!
//! # Layout
//! - `behavior`: the knobs ([`FakeBehavior`], [`FakeFailure`], [`ErrorShape`]).
//! - `server`: [`start`], [`start_on`], the router, the request counters and
//!   the `/_fake/` control endpoints ([`FakeLlm`]).
//! - `generate`: one model request, whatever its API: the knobs (hold,
//!   latency, hang, model check, failure), then a generation's answer.
//! - `ask`: what a generation request asks for, and the reply's shape.
//! - `shape`: tool arguments, JSON replies, streamed pieces.
//! - `reply`: the deterministic reply tokens ([`reply_tokens`],
//!   [`reply_text`]) and the reply being built.
//! - `stream`: the frames of a streamed reply, paced and cut per the behavior.
//! - `ollama`: Ollama's wire format: model lists, NDJSON lines, errors.
//! - `show`: Ollama's `/api/show`.
//! - `poison`: the poison knob: a marked request's caller process killed.
//! - `openai`: the OpenAI (and vLLM) wire format: models, SSE chunks, errors.
//! - `embed`: the embedding endpoints of both APIs.

mod ask;
mod behavior;
mod embed;
mod generate;
mod ollama;
mod openai;
mod poison;
mod reply;
mod server;
mod shape;
mod show;
mod stream;
#[cfg(test)]
mod tests;

pub use behavior::{
    DEFAULT_MODELS, DEFAULT_RESPONSE_TOKENS, ErrorShape, FakeBehavior, FakeFailure,
};
pub use embed::{EMBEDDING_DIMS, embedding, embedding_base64};
pub use ollama::LOAD_DURATION_NS;
pub use reply::{reply_text, reply_tokens};
pub use server::{FakeLlm, start, start_on};
pub use shape::{json_reply, split_pieces, tool_arguments};
