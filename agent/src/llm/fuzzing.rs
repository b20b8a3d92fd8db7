//! The agent's reply decoding without a backend, for kobo-fuzz: a gateway
//! call's answer (OpenAI SSE, Ollama NDJSON, or one JSON document of any
//! API) read from the given chunks as the agent reads it off the wire.

use std::time::Duration;

use kobo_protocol::{GatewayApi, LlmOutput};

use super::LlmError;
use super::gateway_output::OutputExtractor;

/// Every chunk arrives this long after the call started.
pub const ELAPSED: Duration = Duration::from_millis(4);
/// The model the call asked for (the output's when the answer names none).
pub const REQUESTED_MODEL: &str = "asked";

/// The output the agent takes from an answer of `api` arriving in `chunks`
/// (`stream` as the client asked), or its error.
pub fn reply_output(
    api: GatewayApi,
    stream: bool,
    chunks: &[&[u8]],
) -> Result<LlmOutput, LlmError> {
    let mut extractor = OutputExtractor::new("test", api, stream, REQUESTED_MODEL);
    for chunk in chunks {
        if let Some(output) = extractor.push(chunk, ELAPSED)? {
            return Ok(output);
        }
    }
    extractor.finish(ELAPSED)
}
