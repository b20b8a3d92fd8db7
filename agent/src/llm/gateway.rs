//! Gateway calls on this node's backend: where an OpenAI or Ollama API call
//! goes, posting the client's body unchanged, and reading the answer chunk
//! by chunk as it arrives while its final output is taken from it.

use std::time::Instant;

use bytes::Bytes;
use kobo_protocol::{GatewayApi, GatewayCall, LlmOutput};
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use super::gateway_output::OutputExtractor;
use super::{Backend, BackendKind, Http, LlmClient, LlmError, read_chunk};

/// One step of reading a backend's answer to a gateway call.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyPiece {
    /// Bytes of the answer, as the backend sent them; more follow.
    Data(Bytes),
    /// The answer is complete: `last` holds the bytes that completed it
    /// (none when the body's end completed it), `output` what it said.
    End {
        last: Option<Bytes>,
        output: LlmOutput,
    },
}

/// A backend's open 2xx answer to a gateway call. Dropping it drops the
/// connection, so the backend sees the call aborted.
pub struct GatewayReply {
    response: reqwest::Response,
    name: &'static str,
    content_type: String,
    /// `None` once the answer ended.
    extractor: Option<OutputExtractor>,
    started: Instant,
}

impl std::fmt::Debug for GatewayReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayReply")
            .field("backend", &self.name)
            .field("status", &self.response.status())
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

/// The URL a gateway call for `api` goes to on a backend of `kind` whose
/// base URL (without a trailing `/` or `/v1`) is `base`. Ollama serves both
/// its own `/api/*` routes and OpenAI's `/v1/*`; an OpenAI-compatible server
/// only the latter; the sim backend none.
pub(crate) fn backend_url(
    kind: BackendKind,
    base: &str,
    api: GatewayApi,
) -> Result<String, LlmError> {
    match kind {
        BackendKind::Ollama => Ok(format!("{base}{}", api.path())),
        BackendKind::OpenAi if !api.is_ollama() => Ok(format!("{base}{}", api.path())),
        BackendKind::OpenAi | BackendKind::Sim => Err(LlmError::permanent(format!(
            "this node's backend ({kind}) does not serve the {} API ({})",
            if api.is_ollama() { "Ollama" } else { "OpenAI" },
            api.path()
        ))),
    }
}

impl LlmClient {
    /// Where a gateway call for `api` goes on this node's backend, or why
    /// the backend cannot serve it (a permanent error).
    pub fn gateway_url(&self, api: GatewayApi) -> Result<String, LlmError> {
        let base = self.http().map_or("", |http| http.base.as_str());
        backend_url(self.inner.kind, base, api)
    }

    fn http(&self) -> Option<&Http> {
        match &self.inner.backend {
            Backend::Ollama(http) | Backend::OpenAi(http) => Some(http),
            Backend::Sim { .. } => None,
        }
    }

    /// Posts a gateway call's body, unchanged, to the backend. A non-2xx
    /// answer or no answer is an error classified like a normal call's
    /// (429, 5xx, unreachable: retryable; other 4xx: permanent, with the
    /// backend's message). Cancel-safe; no overall timeout (the caller's).
    pub async fn gateway_open(&self, call: &GatewayCall) -> Result<GatewayReply, LlmError> {
        let url = self.gateway_url(call.api)?;
        let Some(http) = self.http() else {
            return Err(LlmError::permanent(format!(
                "{}: not an HTTP backend",
                self.inner.kind
            )));
        };
        let stream = call.stream && call.api.can_stream();
        let accept = if stream {
            call.api.stream_content_type()
        } else {
            "application/json"
        };
        // A continued call carries the text its broken stream had sent.
        let body = call
            .backend_body()
            .map_err(|why| LlmError::permanent(format!("this call cannot be continued: {why}")))?;
        let builder = http
            .client
            .post(&url)
            .header(ACCEPT, accept)
            .json(body.as_ref());
        // The LLM's time counts from the call: a whole answer's headers
        // come only once it is all generated.
        let started = Instant::now();
        let response = http.send(builder).await?;
        Ok(GatewayReply::new(http, response, call, stream, started))
    }
}

impl GatewayReply {
    fn new(
        http: &Http,
        response: reqwest::Response,
        call: &GatewayCall,
        stream: bool,
        started: Instant,
    ) -> Self {
        let default_type = if stream {
            call.api.stream_content_type()
        } else {
            "application/json"
        };
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or(default_type)
            .to_owned();
        // A server that ignores `stream` answers one JSON document.
        let stream = stream && !content_type.starts_with("application/json");
        let requested_model = call
            .body
            .get("model")
            .and_then(|m| m.as_str())
            .unwrap_or_default();
        GatewayReply {
            response,
            name: http.name,
            content_type,
            extractor: Some(OutputExtractor::new(
                http.name,
                call.api,
                stream,
                requested_model,
            )),
            started,
        }
    }

    /// The backend's content type, to be passed on with the bytes.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The next bytes of the answer, once read for the output. An error is
    /// a failed answer: a cut stream (no `[DONE]` / `done: true`), an error
    /// event, an unreadable document; the bytes that showed it are not
    /// returned, so they need not be passed on. After [`ReplyPiece::End`]
    /// or an error, the answer is over and this is an error again.
    pub async fn next_piece(&mut self) -> Result<ReplyPiece, LlmError> {
        loop {
            let Some(extractor) = self.extractor.as_mut() else {
                return Err(LlmError::permanent(format!(
                    "{}: the answer has already ended",
                    self.name
                )));
            };
            let chunk = match read_chunk(self.name, &mut self.response).await {
                Ok(chunk) => chunk,
                Err(err) => {
                    self.extractor = None;
                    return Err(err);
                }
            };
            let elapsed = self.started.elapsed();
            let Some(chunk) = chunk else {
                let extractor = self.extractor.take().expect("checked above");
                let output = extractor.finish(elapsed)?;
                return Ok(ReplyPiece::End { last: None, output });
            };
            match extractor.push(&chunk, elapsed) {
                Ok(None) if chunk.is_empty() => continue,
                Ok(None) => return Ok(ReplyPiece::Data(chunk)),
                Ok(Some(output)) => {
                    self.extractor = None;
                    return Ok(ReplyPiece::End {
                        last: Some(chunk),
                        output,
                    });
                }
                Err(err) => {
                    self.extractor = None;
                    return Err(err);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_APIS: [GatewayApi; 7] = GatewayApi::ALL;

    #[test]
    fn ollama_serves_both_apis_at_its_endpoint() {
        let base = "http://127.0.0.1:11434";
        for api in ALL_APIS {
            assert_eq!(
                backend_url(BackendKind::Ollama, base, api).expect("served"),
                format!("{base}{}", api.path())
            );
        }
    }

    #[test]
    fn openai_serves_only_the_openai_api() {
        let base = "http://gpu:8000";
        for api in ALL_APIS {
            let url = backend_url(BackendKind::OpenAi, base, api);
            if api.is_ollama() {
                let err = url.expect_err("not served");
                assert!(!err.retryable, "{err}");
                assert!(
                    err.message
                        .starts_with("this node's backend (openai) does not serve the Ollama API"),
                    "{err}"
                );
            } else {
                assert_eq!(url.expect("served"), format!("{base}{}", api.path()));
            }
        }
    }

    #[test]
    fn sim_serves_no_gateway_call() {
        for api in ALL_APIS {
            let err = backend_url(BackendKind::Sim, "", api).expect_err("not served");
            assert!(!err.retryable);
            assert!(
                err.message.contains("backend (sim) does not serve"),
                "{err}"
            );
        }
    }

    #[test]
    fn an_openai_endpoint_ending_in_v1_is_not_doubled() {
        for endpoint in [
            "http://gpu:8000/v1",
            "http://gpu:8000/v1/",
            "http://gpu:8000",
        ] {
            let client = LlmClient::new(super::super::LlmConfig {
                kind: BackendKind::OpenAi,
                endpoint: Some(endpoint.into()),
                api_key: None,
                default_model: None,
                sim_latency: std::time::Duration::ZERO,
                request_timeout: None,
            })
            .expect("client builds");
            assert_eq!(
                client.gateway_url(GatewayApi::OpenAiChat).expect("served"),
                "http://gpu:8000/v1/chat/completions",
                "{endpoint}"
            );
        }
    }
}
