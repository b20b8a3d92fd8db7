//! The gateway: OpenAI- and Ollama-compatible routes in front of the fleet.
//! Every request is a job, routed by the same rules as any job; the agent
//! that takes it calls its backend with the client's body and uploads the
//! answer as it is produced, which is relayed to the client.
//!
//! # Layout
//! - `fields.rs`: what each API's body may say (a field kobo cannot carry is
//!   a 400 naming it).
//! - `hints.rs`: the job a request becomes (kind, routing headers).
//! - `relay.rs`: submit, wait in the queue, relay whole or streamed.
//! - `upload.rs`: the agent's side, `POST /v1/agent/jobs/{id}/stream`.
//! - `models.rs`: model lists; `errors.rs`: each API's error shape.

pub mod errors;
mod fields;
#[doc(hidden)]
pub mod fuzzing;
mod hints;
pub(crate) mod models;
mod relay;
pub(crate) mod upload;

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::Response;
use kobo_protocol::GatewayApi;
use kobo_queue::access::Caller;

use crate::api::AppState;

macro_rules! gateway_route {
    ($name:ident, $api:expr) => {
        pub(crate) async fn $name(
            State(state): State<AppState>,
            Extension(caller): Extension<Caller>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            relay::handle(state, caller, headers, body, $api).await
        }
    };
}

gateway_route!(openai_chat, GatewayApi::OpenAiChat);
gateway_route!(openai_completions, GatewayApi::OpenAiCompletions);
gateway_route!(openai_embeddings, GatewayApi::OpenAiEmbeddings);
gateway_route!(ollama_chat, GatewayApi::OllamaChat);
gateway_route!(ollama_generate, GatewayApi::OllamaGenerate);
gateway_route!(ollama_embed, GatewayApi::OllamaEmbed);
gateway_route!(ollama_embeddings, GatewayApi::OllamaEmbeddings);
