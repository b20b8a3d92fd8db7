//! The calls between `kobo-agent` and `kobo-coord`. The coordinator never
//! dials an agent: every exchange here is a request from the agent.

use serde::{Deserialize, Serialize};

use crate::{JobId, JobState, LlmOutput, LlmRequest, NodeMetrics, UnixMillis};

/// `POST /v1/agent/register`: announce the node and what it can do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub node_id: String,
    /// Random per agent process: a new instance of a known node means the old
    /// one is gone, so its leases are released at once.
    pub instance_id: String,
    pub region: String,
    pub capabilities: Vec<String>,
    pub max_workers: u32,
    #[serde(default)]
    pub gpu: bool,
    /// `ollama`, `openai` or `sim`.
    pub backend: String,
    /// Models the node's LLM serves.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specialization: Option<String>,
    /// Where the node is, when its region's place is not precise enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
}

/// Timings the agent must follow; the coordinator owns them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegisterResponse {
    pub heartbeat_interval_ms: u64,
    pub lease_ttl_ms: u64,
    pub long_poll_ms: u64,
    pub server_time: UnixMillis,
}

/// `POST /v1/agent/lease`: ask for up to `max_jobs`, parking up to `wait_ms`
/// when none is ready.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub node_id: String,
    pub instance_id: String,
    pub max_jobs: u32,
    #[serde(default)]
    pub wait_ms: u64,
}

/// One granted lease. Every later call about the job carries
/// `(job_id, lease_token)`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lease {
    pub job_id: JobId,
    pub lease_token: i64,
    pub attempt: u32,
    pub kind: String,
    pub expires_at: UnixMillis,
    pub timeout_ms: Option<u64>,
    pub request: LlmRequest,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaseResponse {
    pub leases: Vec<Lease>,
}

/// A lease the agent holds and is still working on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct HeldLease {
    pub job_id: JobId,
    pub lease_token: i64,
}

/// `POST /v1/agent/heartbeat`: renews every held lease and reports metrics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub node_id: String,
    pub instance_id: String,
    pub running: Vec<HeldLease>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<NodeMetrics>,
    /// Network round trip of the previous heartbeat, as the agent measured
    /// it: the call's time less the answer's `coordinator_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<u32>,
    /// Models currently loaded in memory (Ollama `/api/ps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loaded_models: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeartbeatResponse {
    /// Held jobs that were cancelled: abort them, report nothing.
    pub cancelled: Vec<JobId>,
    /// Held jobs whose lease is no longer this agent's (expired and given to
    /// another node, or finished): abort them, report nothing.
    pub revoked: Vec<JobId>,
    /// The node is draining: lease nothing more, finish what runs.
    pub drain: bool,
    pub lease_ttl_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Time the coordinator spent on the heartbeat, from the moment its
    /// handler had the request to the answer (the store write waits its
    /// turn here): the agent takes it off the call's time, so `rtt_ms`
    /// measures the network and TLS, not the coordinator's queue.
    #[serde(default)]
    pub coordinator_ms: u32,
}

/// How an attempt ended, as the agent reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    Succeeded {
        output: LlmOutput,
    },
    Failed {
        error: String,
        /// Timeouts, 5xx, 429 and refused connections are retryable; a bad
        /// request or an unknown model is not.
        retryable: bool,
    },
}

/// `POST /v1/agent/jobs/{id}/complete`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub node_id: String,
    pub lease_token: i64,
    pub outcome: Outcome,
}

/// Most reports one `POST /v1/agent/complete` may carry.
pub const MAX_REPORTS: usize = 1000;

/// `POST /v1/agent/complete`: several results in one call. An agent sends
/// the results that finished while its previous report was on the wire, so
/// a busy node reports in few calls and an idle one without delay.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompleteBatchRequest {
    pub node_id: String,
    pub reports: Vec<JobReport>,
}

/// One result in a [`CompleteBatchRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobReport {
    pub job_id: JobId,
    pub lease_token: i64,
    pub outcome: Outcome,
}

/// The answer to a [`CompleteBatchRequest`]: one entry per report, in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompleteBatchResponse {
    pub results: Vec<ReportAnswer>,
}

/// What became of one report: `state` when it was accepted (or was an
/// exact repeat, `duplicate`), `error` when it was refused (`stale_lease`:
/// the lease is no longer the node's; `not_found`: no such job). Refusing
/// one report changes nothing about the others.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportAnswer {
    pub job_id: JobId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    #[serde(default)]
    pub duplicate: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::ErrorDetail>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompleteResponse {
    pub job_id: JobId,
    pub state: JobState,
    /// True when this exact completion had already been accepted (a retry
    /// after a lost answer); nothing changed.
    pub duplicate: bool,
}
