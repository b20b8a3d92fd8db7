//! The agent's settings.

use std::time::Duration;

use crate::identity::TlsIdentity;
use crate::llm::LlmConfig;

/// How long running jobs get to finish after SIGTERM before they are given
/// back to the coordinator.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `https://host:port` of the coordinator, or several comma-separated.
    pub coordinator: String,
    /// PEM of the CA to trust for the coordinator (none: system roots).
    pub ca_pem: Option<Vec<u8>>,
    /// The node certificate and key for mutual TLS.
    pub identity: Option<TlsIdentity>,
    pub node_id: String,
    pub region: String,
    pub capabilities: Vec<String>,
    pub max_workers: u32,
    pub gpu: bool,
    pub specialization: Option<String>,
    /// (latitude, longitude), when the region's place is not precise enough.
    pub coordinates: Option<(f64, f64)>,
    pub llm: LlmConfig,
    /// Models to announce instead of asking the LLM server.
    pub models: Vec<String>,
    pub drain_timeout: Duration,
}
