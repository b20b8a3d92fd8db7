//! The stream framings of the APIs kobo carries, decoded incrementally from
//! whatever byte chunks the network delivers: Server-Sent Events (OpenAI)
//! and newline-delimited JSON (Ollama). The agent reads its backend's
//! streams with them; the coordinator reads what a broken stream had said.

mod ndjson;
mod sse;

pub use ndjson::{LineDecoder, LineTooLong};
pub use sse::{SseDecoder, SseEvent};
