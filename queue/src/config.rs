//! Coordinator settings: queue timings and server options.

use std::path::PathBuf;
use std::time::Duration;

use crate::scoring::Weights;

/// Default heartbeat interval agents are told to keep.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(3);
/// Default lease lifetime; renewed by every heartbeat, so it must cover a few.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);
/// A node that missed this many heartbeats is lost and its leases released.
pub const MISSED_HEARTBEATS_LOST: u32 = 3;
/// Longest a lease request parks: under common 30 s proxy idle timeouts.
pub const DEFAULT_LONG_POLL: Duration = Duration::from_secs(25);
/// First retry delay; doubled per attempt, with jitter.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const DEFAULT_RETRY_CAP: Duration = Duration::from_secs(300);
/// Attempts of a job that names none.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// How long raw node metrics (one row per heartbeat) are kept by default.
pub const METRICS_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How long per-minute node metrics (downsampled from the raw rows) are
/// kept by default.
pub const METRICS_MINUTE_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long a job preferring a busy node or region waits for it (delay
/// scheduling) before any eligible node may take it.
pub const DEFAULT_LOCALITY_WAIT: Duration = Duration::from_secs(3);

/// Timings of the queue, shared by the store, the hub and the reaper.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub heartbeat_interval_ms: u64,
    pub lease_ttl_ms: u64,
    pub long_poll_ms: u64,
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    pub default_max_attempts: u32,
    /// How long a job preferring a busy node or region waits for it.
    pub locality_wait_ms: u64,
    /// Weights of the routing score.
    pub weights: Weights,
    /// How long node metrics are kept, raw and per minute.
    pub metrics_retention: crate::store::MetricsRetention,
}

impl QueueConfig {
    /// A node whose last heartbeat is older than this is lost.
    pub fn lost_after_ms(&self) -> u64 {
        self.heartbeat_interval_ms * MISSED_HEARTBEATS_LOST as u64
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            heartbeat_interval_ms: DEFAULT_HEARTBEAT.as_millis() as u64,
            lease_ttl_ms: DEFAULT_LEASE_TTL.as_millis() as u64,
            long_poll_ms: DEFAULT_LONG_POLL.as_millis() as u64,
            retry_base_ms: DEFAULT_RETRY_BASE.as_millis() as u64,
            retry_cap_ms: DEFAULT_RETRY_CAP.as_millis() as u64,
            default_max_attempts: DEFAULT_MAX_ATTEMPTS,
            locality_wait_ms: DEFAULT_LOCALITY_WAIT.as_millis() as u64,
            weights: Weights::default(),
            metrics_retention: crate::store::MetricsRetention {
                raw: METRICS_RETENTION,
                minute: METRICS_MINUTE_RETENTION,
            },
        }
    }
}

/// Default longest a gateway request waits in the queue for a node before
/// it is answered 503 with `Retry-After`.
pub const DEFAULT_GATEWAY_QUEUE_WAIT: Duration = Duration::from_secs(60);

/// Default bound on gateway requests in flight: each holds a connection and
/// a relay; past it a client is told to come back rather than queued.
pub const DEFAULT_GATEWAY_MAX_REQUESTS: usize = 10_000;

/// How gateway requests (OpenAI and Ollama API calls) become jobs.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The kind of a request that names none (`x-kobo-kind`) and whose model
    /// is not in `model_kinds`.
    pub default_kind: String,
    /// Model → kind, first match wins (`qwen2.5` matches `qwen2.5:latest`).
    pub model_kinds: Vec<(String, String)>,
    /// The priority of gateway requests (interactive: above batch jobs' 0).
    pub priority: i32,
    /// Longest a request waits for a node before a 503.
    pub max_queue_wait: Duration,
    /// Most gateway requests in flight (waiting or answering) at once; more
    /// are answered 503 at once instead of queueing without bound.
    pub max_requests: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            default_kind: "general_query".into(),
            model_kinds: Vec::new(),
            priority: 10,
            max_queue_wait: DEFAULT_GATEWAY_QUEUE_WAIT,
            max_requests: DEFAULT_GATEWAY_MAX_REQUESTS,
        }
    }
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub queue: QueueConfig,
    /// Extra subject alternative names for the server certificate.
    pub sans: Vec<String>,
    /// The URL clients should use, written to `<data-dir>/client.json`;
    /// derived from the bound address when not set.
    pub advertise_url: Option<String>,
    /// A CA certificate and key to use instead of creating one.
    pub ca_import: Option<(PathBuf, PathBuf)>,
    /// Lifetime of the node certificates the CA signs.
    pub node_cert_lifetime: Duration,
    /// How gateway requests become jobs.
    pub gateway: GatewayConfig,
}
