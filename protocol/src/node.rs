//! Nodes (machines running `kobo-agent`) as clients see them.

use serde::{Deserialize, Serialize};

use crate::UnixMillis;

/// A node's status as the coordinator sees it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Heartbeating and taking work.
    Active,
    /// Missed too many heartbeats; its leases were released.
    Lost,
    /// Taking no new work; running jobs finish.
    Draining,
    /// Draining finished: nothing running.
    Drained,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Active => "active",
            NodeStatus::Lost => "lost",
            NodeStatus::Draining => "draining",
            NodeStatus::Drained => "drained",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => NodeStatus::Active,
            "lost" => NodeStatus::Lost,
            "draining" => NodeStatus::Draining,
            "drained" => NodeStatus::Drained,
            _ => return None,
        })
    }
}

/// System metrics an agent reports with each heartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeMetrics {
    /// Whole-machine CPU use, 0–100.
    pub cpu_percent: f32,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    pub load_1: f64,
    pub load_5: f64,
    pub load_15: f64,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
}

/// One node, as `GET /v1/nodes` returns it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeView {
    pub node_id: String,
    pub region: String,
    pub status: NodeStatus,
    pub capabilities: Vec<String>,
    pub max_workers: u32,
    /// Jobs currently leased to the node.
    pub running: u32,
    pub gpu: bool,
    pub backend: String,
    pub models: Vec<String>,
    pub agent_version: String,
    pub registered_at: UnixMillis,
    pub last_heartbeat_at: UnixMillis,
    /// Round trip of the agent's previous heartbeat, as it measured it.
    pub rtt_ms: Option<u32>,
    pub jobs_succeeded: u64,
    pub jobs_failed: u64,
    /// Mean LLM time of its successful attempts.
    #[serde(default)]
    pub mean_llm_ms: Option<f64>,
    /// Stated coordinates, if any (else its region's).
    #[serde(default)]
    pub latitude: Option<f64>,
    #[serde(default)]
    pub longitude: Option<f64>,
    #[serde(default)]
    pub specialization: Option<String>,
    pub metrics: Option<NodeMetrics>,
}
