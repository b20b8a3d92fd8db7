//! The agent's side of the agent ↔ coordinator calls. The agent always dials;
//! the coordinator never does. Given several coordinator URLs it calls the
//! one that answers and follows a standby's pointer to the leader
//! (`kobo_client::follow`); the callers' backoff paces the retries.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use kobo_client::follow::{self, Answer, Coordinators};
use kobo_protocol::{
    CompleteBatchRequest, CompleteBatchResponse, CompleteRequest, CompleteResponse, ErrorBody,
    HeartbeatRequest, HeartbeatResponse, JobId, LeaseRequest, LeaseResponse, RegisterRequest,
    RegisterResponse, RenewRequest, RenewResponse, StreamQuery,
};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::identity::TlsIdentity;

/// Connect timeout to the coordinator.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for calls that do not park (register, heartbeat, complete).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Slack on top of the long-poll wait before a lease call is given up.
const LEASE_SLACK: Duration = Duration::from_secs(10);

/// Why a call failed, as far as the agent's next move is concerned.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The coordinator refused this node's credentials (401/403): revoked,
    /// or a certificate for another node.
    #[error("{0}")]
    Refused(String),
    /// The coordinator rejected the request (4xx): retrying it will not help.
    #[error("{0}")]
    Rejected(String),
}

/// How the coordinator answered a gateway stream upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamAnswer {
    /// 2xx (204): it took the whole upload.
    Taken,
    /// 410: the client went away and the job is cancelled; nothing more is
    /// wanted, not even a result.
    Gone(String),
}

/// The agent's HTTPS client of the coordinator: trusts only the
/// coordinator's CA and presents the node certificate (mutual TLS). The
/// identity can be swapped after a renewal.
#[derive(Clone)]
pub struct CoordinatorClient {
    http: Arc<RwLock<reqwest::Client>>,
    coordinators: Coordinators,
    ca_pem: Option<Vec<u8>>,
}

fn build_http(
    ca_pem: Option<&[u8]>,
    identity: Option<&TlsIdentity>,
) -> anyhow::Result<reqwest::Client> {
    Ok(kobo_client::https_client(&kobo_client::HttpsOptions {
        ca_pem,
        identity: identity.map(|i| (i.cert_pem.as_slice(), i.key_pem.as_slice())),
        connect_timeout: CONNECT_TIMEOUT,
        keep_alive: Some(Duration::from_secs(20)),
        pool_idle_timeout: Some(Duration::from_secs(90)),
        user_agent: concat!("kobo-agent/", env!("CARGO_PKG_VERSION")),
        ..kobo_client::HttpsOptions::default()
    })?)
}

/// The error of a non-2xx answer to a call on `path`.
fn call_error(path: &str, status: StatusCode, bytes: &[u8]) -> CallError {
    let message = serde_json::from_slice::<ErrorBody>(bytes)
        .map(|b| b.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned());
    let message = format!("{path}: {status}: {message}");
    match status {
        StatusCode::CONFLICT if path.contains("/jobs/") => CallError::Stale(message),
        StatusCode::CONFLICT | StatusCode::NOT_FOUND => CallError::Unregistered(message),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => CallError::Refused(message),
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            CallError::Unavailable(message)
        }
        _ => CallError::Rejected(message),
    }
}

impl CoordinatorClient {
    pub fn new(
        url: &str,
        ca_pem: Option<&[u8]>,
        identity: Option<&TlsIdentity>,
    ) -> anyhow::Result<CoordinatorClient> {
        Ok(CoordinatorClient {
            http: Arc::new(RwLock::new(build_http(ca_pem, identity)?)),
            coordinators: Coordinators::parse(url).map_err(anyhow::Error::msg)?,
            ca_pem: ca_pem.map(<[u8]>::to_vec),
        })
    }

    /// The coordinator calls go to now.
    pub fn current_url(&self) -> String {
        self.coordinators.current()
    }

    /// After a call to `base` failed to connect: the next URL, for the
    /// caller's retry.
    fn unreachable(&self, base: &str, path: &str, err: &reqwest::Error) -> CallError {
        if err.is_connect() {
            let next = self.coordinators.advance(base);
            if next != base {
                tracing::info!(url = %base, next = %next, "coordinator unreachable; trying the next");
            }
        }
        CallError::Unavailable(format!("{base}{path}: {err:#}"))
    }

    /// Whether the answer was a standby's refusal; points the next call at
    /// the leader it names, or at the next URL when it names none.
    fn redirected(&self, base: &str, response: &reqwest::Response) -> Option<String> {
        match follow::answer(response.status(), response.headers()) {
            Answer::Served => None,
            Answer::Leader(leader) if leader != base => {
                tracing::info!(standby = %base, %leader, "following the leader");
                self.coordinators.follow(&leader);
                Some(leader)
            }
            Answer::Leader(_) | Answer::NoLeader => {
                self.coordinators.advance(base);
                None
            }
        }
    }

    /// Presents `identity` from now on (new connections).
    pub fn set_identity(&self, identity: &TlsIdentity) -> anyhow::Result<()> {
        let http = build_http(self.ca_pem.as_deref(), Some(identity))?;
        *self.http.write().unwrap_or_else(PoisonError::into_inner) = http;
        Ok(())
    }

    fn http(&self) -> reqwest::Client {
        self.http
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, CallError> {
        // A standby's refusal changed nothing: the call is sent again to
        // the leader it names, once per URL known (standbys naming each
        // other cannot loop).
        let mut hops_left = self.coordinators.urls().len() + 1;
        let response = loop {
            let base = self.coordinators.current();
            let response = self
                .http()
                .post(format!("{base}{path}"))
                .timeout(timeout)
                .json(body)
                .send()
                .await
                .map_err(|e| self.unreachable(&base, path, &e))?;
            if self.redirected(&base, &response).is_some() && hops_left > 0 {
                hops_left -= 1;
                continue;
            }
            break response;
        };
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CallError::Unavailable(format!("reading answer: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| CallError::Rejected(format!("undecodable answer to {path}: {e}")));
        }
        Err(call_error(path, status, &bytes))
    }

    /// `POST /v1/agent/jobs/{id}/stream`: uploads a gateway call's answer
    /// as `body` yields it. Returns when the coordinator answers, which it
    /// may do before the body ended (410, 409): the caller stops feeding
    /// the body then. No overall timeout: a stream lasts as long as the
    /// backend's answer does (the job's own limits bound it).
    pub async fn stream(
        &self,
        job_id: JobId,
        query: &StreamQuery,
        content_type: &str,
        body: reqwest::Body,
    ) -> Result<StreamAnswer, CallError> {
        let path = format!("/v1/agent/jobs/{job_id}/stream");
        let base = self.coordinators.current();
        let response = self
            .http()
            .post(format!("{base}{path}"))
            .query(query)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| self.unreachable(&base, &path, &e))?;
        // The body is spent: a standby's refusal only points the next call.
        self.redirected(&base, &response);
        let status = response.status();
        if status.is_success() {
            return Ok(StreamAnswer::Taken);
        }
        // An error document is small; a coordinator that stalls sending it
        // leaves the status to go by.
        let bytes = tokio::time::timeout(CALL_TIMEOUT, response.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let error = call_error(&path, status, &bytes);
        if status == StatusCode::GONE {
            return Ok(StreamAnswer::Gone(error.to_string()));
        }
        Err(error)
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

    pub async fn renew(&self, req: &RenewRequest) -> Result<RenewResponse, CallError> {
        self.post("/v1/agent/renew", req, CALL_TIMEOUT).await
    }

    /// Reports several results at once; see [`crate::report::Reporter`].
    pub async fn complete_batch(
        &self,
        req: &CompleteBatchRequest,
    ) -> Result<CompleteBatchResponse, CallError> {
        self.post("/v1/agent/complete", req, CALL_TIMEOUT).await
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
