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
/// How long a session's job waits for the node that served the session last
/// (its prompt cache is warm there) before any node may take it: short, as
/// a cold prefill on a free node soon beats waiting for a warm busy one.
pub const DEFAULT_SESSION_WAIT: Duration = Duration::from_millis(1500);

/// How long a lost node is kept before it is retired: long enough for a
/// machine to come back from a reboot or a network outage, short enough
/// that the pods of a scaled-in Deployment do not pile up.
pub const DEFAULT_RETIRE_LOST_AFTER: Duration = Duration::from_secs(24 * 3600);

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
    /// [`DEFAULT_SESSION_WAIT`].
    pub session_wait_ms: u64,
    /// Weighted fair share between submitters in the lease path; off, jobs
    /// lease by class, priority and age alone (for comparison).
    pub fair_share: bool,
    /// Weights of the routing score.
    pub weights: Weights,
    /// How long node metrics are kept, raw and per minute.
    pub metrics_retention: crate::store::MetricsRetention,
    /// A node lost for longer than this is retired (its certificates
    /// revoked, gone from the listing).
    pub retire_lost_after_ms: u64,
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
            session_wait_ms: DEFAULT_SESSION_WAIT.as_millis() as u64,
            fair_share: true,
            weights: Weights::default(),
            metrics_retention: crate::store::MetricsRetention {
                raw: METRICS_RETENTION,
                minute: METRICS_MINUTE_RETENTION,
            },
            retire_lost_after_ms: DEFAULT_RETIRE_LOST_AFTER.as_millis() as u64,
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

/// Who copies the write-ahead log into the database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpoints {
    /// kobo's own checkpoint thread (PASSIVE, every 250 ms).
    #[default]
    Internal,
    /// Another process (Litestream) checkpoints: kobo never does, so no
    /// checkpoint of kobo's moves the log under the replicator (which then
    /// loses its place and takes a whole new snapshot). Without that
    /// process the log grows without bound.
    External,
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
    /// Bounds on connections and request bodies (slow or flooding clients).
    pub limits: ConnectionLimits,
    /// Whether kobo checkpoints the write-ahead log itself.
    pub checkpoints: Checkpoints,
    /// A PostgreSQL URL to keep the jobs in instead of the data directory's
    /// SQLite file (`--database`); the keys and certificates stay in the
    /// data directory either way.
    pub database: Option<String>,
    /// This coordinator's role among several sharing one database (a
    /// [`crate::leader::Leadership`]'s channel, or a fixed standby); `None`:
    /// the only coordinator, always the leader.
    pub role: Option<tokio::sync::watch::Receiver<crate::leader::Role>>,
}

/// Default bound on open connections: a fleet of 10,000 agents (one HTTP/2
/// connection each) plus clients, under a raised file-descriptor limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Default bound on connections that have not yet made an authenticated
/// request: enough for many agents reconnecting at once after a restart
/// (each is unauthenticated for one handshake and one request), small
/// enough that holding them all costs little memory (a connection stalled
/// in a request body costs about 46 KiB: TLS, hyper's buffers, the request).
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 512;
/// Default bound on not-yet-authenticated connections from one source
/// address (IPv6: one /64), so one host cannot take the whole pool above.
pub const DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE: usize = 128;
/// Default time a request body may take before the minimum rate applies.
pub const DEFAULT_BODY_GRACE: Duration = Duration::from_secs(5);
/// Default minimum rate of a request body after the grace period (bytes per
/// second, averaged from the request's start): a client sending one byte
/// every few seconds is cut after the grace period.
pub const DEFAULT_BODY_MIN_RATE: u64 = 1_024;
/// Default longest a whole request body may take (16 MiB, the largest body,
/// needs about 1.1 Mbit/s to make it).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(120);
/// Default most concurrent streams on one HTTP/2 connection (an agent
/// multiplexes its long-poll, heartbeats, reports and uploads on one).
pub const DEFAULT_H2_MAX_STREAMS: u32 = 1_024;
/// Default largest header list of one HTTP/2 request (bytes, decoded): also
/// bounds a CONTINUATION flood, which h2 counts against it.
pub const DEFAULT_H2_MAX_HEADER_LIST: u32 = 16 << 10;
/// Default most streams an HTTP/2 client may reset before they are even
/// served before the connection is closed (rapid reset, CVE-2023-44487).
pub const DEFAULT_H2_MAX_PENDING_RESETS: usize = 20;
/// Default most streams the server may reset for a client's protocol errors
/// before the connection is closed (RUSTSEC-2024-0003).
pub const DEFAULT_H2_MAX_ERROR_RESETS: usize = 1_024;

/// Bounds on connections and request bodies, so slow or flooding clients
/// cannot hold the coordinator's memory or file descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most open connections; more are closed at once (and audited).
    pub max_connections: usize,
    /// Most connections that have not yet made an authenticated request
    /// (API key, node certificate, dashboard session).
    pub max_unauthenticated: usize,
    /// Most of those from one source address (IPv6: one /64).
    pub max_unauthenticated_per_source: usize,
    /// How long a request body may take before `body_min_rate` applies.
    pub body_grace: Duration,
    /// Least bytes per second of a request body after `body_grace`,
    /// averaged from the request's start; 0 turns the rate check off.
    /// The agent's stream upload is exempt (it arrives at LLM speed).
    pub body_min_rate: u64,
    /// Longest a whole request body may take (the stream upload is exempt).
    pub body_timeout: Duration,
    pub h2_max_streams: u32,
    pub h2_max_header_list: u32,
    pub h2_max_pending_resets: usize,
    pub h2_max_error_resets: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
            max_unauthenticated_per_source: DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE,
            body_grace: DEFAULT_BODY_GRACE,
            body_min_rate: DEFAULT_BODY_MIN_RATE,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            h2_max_streams: DEFAULT_H2_MAX_STREAMS,
            h2_max_header_list: DEFAULT_H2_MAX_HEADER_LIST,
            h2_max_pending_resets: DEFAULT_H2_MAX_PENDING_RESETS,
            h2_max_error_resets: DEFAULT_H2_MAX_ERROR_RESETS,
        }
    }
}
