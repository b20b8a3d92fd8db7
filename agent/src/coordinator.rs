//! The agent's side of the agent ↔ coordinator calls. The agent always dials;
//! the coordinator never does.

use std::time::Duration;

use anyhow::Context;
use kobo_protocol::{
    CompleteRequest, CompleteResponse, ErrorBody, HeartbeatRequest, HeartbeatResponse, JobId,
    LeaseRequest, LeaseResponse, RegisterRequest, RegisterResponse,
};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Connect timeout to the coordinator.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for calls that do not park (register, heartbeat, complete).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Slack on top of the long-poll wait before a lease call is given up.
const LEASE_SLACK: Duration = Duration::from_secs(10);

/// Why a call failed, as far as the agent's next move is concerned.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The coordinator could not be reached or failed (5xx): try again later.
    #[error("coordinator unreachable: {0}")]
    Unavailable(String),
    /// The coordinator does not know this node or this instance: register again.
    #[error("{0}")]
    Unregistered(String),
    /// The lease is no longer ours (409): drop the job.
    #[error("{0}")]
    Stale(String),
    /// The coordinator rejected the request (4xx): retrying it will not help.
    #[error("{0}")]
    Rejected(String),
}

#[derive(Clone)]
pub struct CoordinatorClient {
    http: reqwest::Client,
    base: String,
}

impl CoordinatorClient {
    pub fn new(url: &str, ca_pem: Option<&[u8]>) -> anyhow::Result<CoordinatorClient> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("kobo-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_pem {
            let certs =
                reqwest::Certificate::from_pem_bundle(pem).context("parsing the CA certificate")?;
            anyhow::ensure!(!certs.is_empty(), "the CA file holds no certificate");
            builder = builder.tls_certs_only(certs);
        }
        Ok(CoordinatorClient {
            http: builder.build().context("building the HTTPS client")?,
            base: url.trim_end_matches('/').to_string(),
        })
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| CallError::Unavailable(format!("{e:#}")))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CallError::Unavailable(format!("reading answer: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| CallError::Rejected(format!("undecodable answer to {path}: {e}")));
        }
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        let message = format!("{path}: {status}: {message}");
        Err(match status {
            StatusCode::CONFLICT if path.contains("/jobs/") => CallError::Stale(message),
            StatusCode::CONFLICT | StatusCode::NOT_FOUND => CallError::Unregistered(message),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                CallError::Unavailable(message)
            }
            _ => CallError::Rejected(message),
        })
    }

    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, CallError> {
        self.post("/v1/agent/register", req, CALL_TIMEOUT).await
    }

    pub async fn lease(&self, req: &LeaseRequest) -> Result<LeaseResponse, CallError> {
        let timeout = Duration::from_millis(req.wait_ms) + LEASE_SLACK;
        self.post("/v1/agent/lease", req, timeout).await
    }

    pub async fn heartbeat(&self, req: &HeartbeatRequest) -> Result<HeartbeatResponse, CallError> {
        self.post("/v1/agent/heartbeat", req, CALL_TIMEOUT).await
    }

    pub async fn complete(
        &self,
        job_id: JobId,
        req: &CompleteRequest,
    ) -> Result<CompleteResponse, CallError> {
        self.post(
            &format!("/v1/agent/jobs/{job_id}/complete"),
            req,
            CALL_TIMEOUT,
        )
        .await
    }
}
