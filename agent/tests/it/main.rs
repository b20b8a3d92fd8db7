//! The agent's LLM backends (`kobo_agent::llm`) against the fake LLM of
//! `kobo-fake-llm`, over real HTTP on loopback: replies and usage, streamed
//! text, error statuses and their classification, cut streams, held calls.
//!
//! # Layout
//! - `support`: starting a fake and a client on it, requests, assertions.
//! - `ollama`: the Ollama backend (`/api/generate`, `/api/chat`, NDJSON).
//! - `openai`: the OpenAI-compatible backend (`/v1/chat/completions`, SSE).
//! - `classify`: which failures are retryable, on both backends.
//! - `hold`: a call the fake holds ends when the fake lets it go.
//! - `gateway`: the gateway relay, from the fake to a stub coordinator's upload route.

mod classify;
mod gateway;
mod hold;
mod ollama;
mod openai;
mod support;
