//! Observability: the cluster summary behind `GET /v1/status`, the
//! dashboard's live updates (`GET /v1/events`) and `kobo-coord status`, and
//! the dashboard's login (`POST /v1/session`).

use serde::{Deserialize, Serialize};

use crate::{AccessRole, JobId, JobState, NodeView, UnixMillis};

/// Where a node is on the map: from its region (or, later, its own
/// coordinates).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Place {
    /// A readable name, e.g. `Tokyo`.
    pub city: String,
    pub latitude: f64,
    pub longitude: f64,
}

/// A node's recent work, over `window_ms` up to the status's `server_time`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeRecent {
    pub window_ms: u64,
    /// Attempts that ended in the window (succeeded or not).
    pub attempts: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Mean time from lease to a successful report, as the coordinator saw it.
    pub mean_response_ms: Option<f64>,
    /// Completion tokens per second of LLM time.
    pub tokens_per_s: Option<f64>,
    /// Gateway requests (jobs of the OpenAI- and Ollama-compatible routes)
    /// among the attempts that ended in the window.
    #[serde(default)]
    pub gateway_requests: u64,
    /// Completion tokens per second of the gateway requests that
    /// succeeded, over their time from lease to report (what a client of
    /// the gateway waits, less its time in the queue).
    #[serde(default)]
    pub gateway_tokens_per_s: Option<f64>,
}

/// A node with its place on the map and its recent work.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeCard {
    #[serde(flatten)]
    pub node: NodeView,
    pub place: Option<Place>,
    pub recent: NodeRecent,
}

/// Jobs not finished, of one state and kind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueRow {
    pub state: JobState,
    pub kind: String,
    pub jobs: u64,
    /// Queued: ready since; scheduled: submitted at; leased: leased at —
    /// of the oldest job in the row.
    pub oldest_at: Option<UnixMillis>,
}

/// A job as the dashboard lists it: no prompt, no result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobSummary {
    pub id: JobId,
    pub state: JobState,
    pub kind: String,
    pub model: Option<String>,
    pub priority: i32,
    pub node_id: Option<String>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub finished_at: Option<UnixMillis>,
    pub last_error: Option<String>,
    pub queue_reason: Option<String>,
    /// Why the router chose the node (when the coordinator recorded it).
    pub route_reason: Option<crate::RouteReason>,
    pub confidential: bool,
}

/// Jobs counted by state since the database began.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JobTotals {
    pub submitted: u64,
    pub scheduled: u64,
    pub queued: u64,
    pub leased: u64,
    pub succeeded: u64,
    pub dead: u64,
    pub cancelled: u64,
}

/// Throughput and latency over the last `window_ms`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Recent {
    pub window_ms: u64,
    /// Jobs that reached `succeeded`.
    pub succeeded: u64,
    /// Jobs that reached `dead`.
    pub dead: u64,
    /// Attempts that ended without success (retried or not).
    pub failed_attempts: u64,
    /// Mean time from lease to report of the successful attempts.
    pub mean_run_ms: Option<f64>,
    /// Mean time from ready to leased.
    pub mean_pickup_ms: Option<f64>,
}

/// The cluster over time, for the dashboard's plots: the last hour in
/// minutes and the last day in quarter hours.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Series {
    pub hour: SeriesWindow,
    pub day: SeriesWindow,
}

/// Equal buckets of time: bucket `i` covers `[start + i·step_ms, start +
/// (i+1)·step_ms)`; the last one holds the server's now. Every list has one
/// value per bucket (`None`: nothing to measure in that bucket).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SeriesWindow {
    pub start: UnixMillis,
    pub step_ms: u64,
    /// Jobs that finished in the bucket, by final state.
    pub succeeded: Vec<u64>,
    pub dead: Vec<u64>,
    pub cancelled: Vec<u64>,
    /// The most jobs queued (ready, waiting for a worker) at once in the
    /// bucket.
    pub queued: Vec<u64>,
    /// Ready → leased, of the leases granted in the bucket.
    pub pickup_p50_ms: Vec<Option<f64>>,
    pub pickup_p95_ms: Vec<Option<f64>>,
    /// Leased → reported, of the attempts that ended in the bucket.
    pub run_p50_ms: Vec<Option<f64>>,
    pub run_p95_ms: Vec<Option<f64>>,
    /// Completion tokens of the jobs that succeeded in the bucket, per
    /// second of the bucket (throughput of the whole cluster; the last
    /// bucket fills up as its time passes).
    pub tokens_per_s: Vec<f64>,
    pub nodes: Vec<NodeSeries>,
}

/// One node over time, bucket by bucket as in its [`SeriesWindow`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeSeries {
    pub node_id: String,
    /// Mean CPU use of the heartbeats in the bucket.
    pub cpu_percent: Vec<Option<f64>>,
    /// Mean memory in use, as a percentage of the node's memory.
    pub mem_percent: Vec<Option<f64>>,
    /// Completion tokens of the node's jobs that succeeded in the bucket,
    /// per second of the bucket.
    pub tokens_per_s: Vec<f64>,
}

/// `GET /v1/status`: the cluster at a glance; also each message of
/// `GET /v1/events` (`event: status`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    pub server_time: UnixMillis,
    pub version: String,
    /// When this coordinator process started.
    pub started_at: UnixMillis,
    pub nodes: Vec<NodeCard>,
    pub queue: Vec<QueueRow>,
    pub totals: JobTotals,
    pub recent: Recent,
    /// The cluster over time (the dashboard's plots).
    #[serde(default)]
    pub series: Series,
    /// The newest jobs, newest first.
    pub latest_jobs: Vec<JobSummary>,
    /// Usage per submitter (API key, `local`, …) over the last 24 hours,
    /// most tokens first (the dashboard's per-key panel).
    #[serde(default)]
    pub keys: Vec<crate::UsageRow>,
}

/// `POST /v1/session`: exchange an API key for a dashboard session cookie.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SessionCreate {
    pub api_key: String,
}

/// The answer to `POST /v1/session` (the cookie itself is `Set-Cookie`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionCreated {
    /// Sessions read only, whatever the key's role.
    pub role: AccessRole,
    pub expires_at: UnixMillis,
}
