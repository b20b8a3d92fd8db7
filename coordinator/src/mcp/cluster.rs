//! Nodes and the cluster as a whole: `list_nodes` entries and the
//! `cluster_status` summary (queue depth by state, why jobs wait, nodes by
//! status, workers, throughput), computed from the job and node listings.

use std::collections::BTreeMap;

use kobo_protocol::{JobListQuery, JobState, JobView, NodeStatus, NodeView, UnixMillis};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::results::rfc3339;
use crate::client::ApiClient;

/// Unfinished jobs of one state counted at most: one listing of the
/// coordinator (its own cap); beyond it the count says "at least".
pub const MAX_COUNTED: u32 = 10_000;
/// Newest jobs looked at for throughput: recent finishes are among them.
pub const RECENT_SCAN: u32 = 1000;
/// The throughput window.
pub const THROUGHPUT_WINDOW_MS: i64 = 60_000;
/// Distinct reasons for waiting jobs shown.
pub const MAX_REASONS: usize = 5;

/// A node's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatusName {
    /// Heartbeating and taking work.
    Active,
    /// Missed its heartbeats; its jobs went to other nodes.
    Lost,
    /// Taking no new work; running jobs finish.
    Draining,
    /// Drained: nothing running.
    Drained,
}

impl From<NodeStatus> for NodeStatusName {
    fn from(status: NodeStatus) -> NodeStatusName {
        match status {
            NodeStatus::Active => NodeStatusName::Active,
            NodeStatus::Lost => NodeStatusName::Lost,
            NodeStatus::Draining => NodeStatusName::Draining,
            NodeStatus::Drained => NodeStatusName::Drained,
        }
    }
}

/// One node of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NodeInfo {
    pub node_id: String,
    pub status: NodeStatusName,
    pub region: String,
    /// Kinds of work it runs.
    pub capabilities: Vec<String>,
    /// Models its LLM serves.
    pub models: Vec<String>,
    pub gpu: bool,
    /// LLM backend: ollama, openai or sim.
    pub backend: String,
    /// Jobs running on it now.
    pub running: u32,
    /// Jobs it runs at once.
    pub max_workers: u32,
    pub last_heartbeat_at: String,
    /// Seconds since its last heartbeat, by this machine's clock.
    pub last_heartbeat_secs_ago: f64,
    pub jobs_succeeded: u64,
    pub jobs_failed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_1: Option<f64>,
}

impl NodeInfo {
    pub fn from_view(node: &NodeView, now: UnixMillis) -> NodeInfo {
        let metrics = node.metrics.as_ref();
        NodeInfo {
            node_id: node.node_id.clone(),
            status: node.status.into(),
            region: node.region.clone(),
            capabilities: node.capabilities.clone(),
            models: node.models.clone(),
            gpu: node.gpu,
            backend: node.backend.clone(),
            running: node.running,
            max_workers: node.max_workers,
            last_heartbeat_at: rfc3339(node.last_heartbeat_at),
            last_heartbeat_secs_ago: (now - node.last_heartbeat_at).max(0) as f64 / 1000.0,
            jobs_succeeded: node.jobs_succeeded,
            jobs_failed: node.jobs_failed,
            cpu_percent: metrics.map(|m| m.cpu_percent),
            memory_used_percent: metrics
                .filter(|m| m.mem_total_bytes > 0)
                .map(|m| 100.0 * m.mem_used_bytes as f64 / m.mem_total_bytes as f64),
            load_1: metrics.map(|m| m.load_1),
        }
    }
}

/// The result of `list_nodes`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeInfo>,
}

/// Unfinished jobs by state.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct QueueDepth {
    /// Waiting for their start time or a retry backoff.
    pub scheduled: usize,
    /// Ready, waiting for a node.
    pub queued: usize,
    /// Running on nodes.
    pub leased: usize,
    /// A count reached 10000, the most counted: there may be more.
    pub capped: bool,
}

/// Why queued jobs wait, with how many wait for that reason.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WaitingReason {
    pub reason: String,
    pub jobs: usize,
}

/// Nodes by status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct NodeCounts {
    pub active: usize,
    pub lost: usize,
    pub draining: usize,
    pub drained: usize,
}

/// Worker slots of the active nodes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Workers {
    pub busy: u32,
    pub free: u32,
    pub total: u32,
}

/// Jobs finished in the last minute (by this machine's clock, among the
/// newest 1000 jobs).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Throughput {
    pub window_secs: u64,
    pub succeeded: usize,
    pub dead: usize,
    pub cancelled: usize,
    /// Tokens generated by the jobs that succeeded in the window.
    pub completion_tokens: u64,
    /// Mean LLM call time of those jobs, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_llm_ms: Option<u64>,
}

/// The result of `cluster_status`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ClusterStatus {
    /// One line for people.
    pub summary: String,
    pub jobs: QueueDepth,
    /// The most common reasons queued jobs wait.
    pub waiting_reasons: Vec<WaitingReason>,
    pub nodes: NodeCounts,
    pub workers: Workers,
    pub throughput: Throughput,
}

/// Reads the nodes and job listings and sums them up.
pub async fn cluster_status(client: &ApiClient, now: UnixMillis) -> anyhow::Result<ClusterStatus> {
    let of_state = |state: JobState, limit: u32| JobListQuery {
        state: Some(state),
        limit: Some(limit),
        ..JobListQuery::default()
    };
    let recent = JobListQuery {
        limit: Some(RECENT_SCAN),
        ..JobListQuery::default()
    };
    let (scheduled, queued, leased) = (
        of_state(JobState::Scheduled, MAX_COUNTED),
        of_state(JobState::Queued, MAX_COUNTED),
        of_state(JobState::Leased, MAX_COUNTED),
    );
    let (nodes, scheduled, queued, leased, recent) = tokio::try_join!(
        client.nodes(),
        client.jobs(&scheduled),
        client.jobs(&queued),
        client.jobs(&leased),
        client.jobs(&recent),
    )?;
    Ok(summarize(
        &nodes,
        [&scheduled.jobs, &queued.jobs, &leased.jobs],
        &recent.jobs,
        now,
    ))
}

/// The status from listings: unfinished jobs by state (scheduled, queued,
/// leased), the newest jobs of any state, and the nodes.
pub fn summarize(
    nodes: &[NodeView],
    [scheduled, queued, leased]: [&Vec<JobView>; 3],
    recent: &[JobView],
    now: UnixMillis,
) -> ClusterStatus {
    let capped = [scheduled, queued, leased]
        .iter()
        .any(|jobs| jobs.len() >= MAX_COUNTED as usize);
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for job in queued {
        let reason = job
            .queue_reason
            .as_deref()
            .unwrap_or("waiting for a free worker");
        *reasons.entry(reason).or_default() += 1;
    }
    let mut waiting_reasons: Vec<WaitingReason> = reasons
        .into_iter()
        .map(|(reason, jobs)| WaitingReason {
            reason: reason.to_string(),
            jobs,
        })
        .collect();
    waiting_reasons.sort_by_key(|reason| std::cmp::Reverse(reason.jobs));
    waiting_reasons.truncate(MAX_REASONS);

    let mut counts = NodeCounts::default();
    let mut workers = Workers::default();
    for node in nodes {
        match node.status {
            NodeStatus::Active => {
                counts.active += 1;
                workers.busy += node.running;
                workers.total += node.max_workers;
            }
            NodeStatus::Lost => counts.lost += 1,
            NodeStatus::Draining => counts.draining += 1,
            NodeStatus::Drained => counts.drained += 1,
        }
    }
    workers.free = workers.total.saturating_sub(workers.busy);

    let mut throughput = Throughput {
        window_secs: (THROUGHPUT_WINDOW_MS / 1000) as u64,
        ..Throughput::default()
    };
    let mut llm_ms = Vec::new();
    for job in recent {
        if job
            .finished_at
            .is_none_or(|at| at < now - THROUGHPUT_WINDOW_MS)
        {
            continue;
        }
        match job.state {
            JobState::Succeeded => {
                throughput.succeeded += 1;
                if let Some(output) = &job.output {
                    throughput.completion_tokens += output.usage.completion_tokens;
                    llm_ms.push(output.usage.duration_ms);
                }
            }
            JobState::Dead => throughput.dead += 1,
            JobState::Cancelled => throughput.cancelled += 1,
            JobState::Scheduled | JobState::Queued | JobState::Leased => {}
        }
    }
    if !llm_ms.is_empty() {
        throughput.mean_llm_ms = Some(llm_ms.iter().sum::<u64>() / llm_ms.len() as u64);
    }
    let jobs = QueueDepth {
        scheduled: scheduled.len(),
        queued: queued.len(),
        leased: leased.len(),
        capped,
    };
    let summary = format!(
        "{} running, {} queued, {} scheduled; {} of {} workers busy on {} active node(s){}; {} finished in the last minute",
        jobs.leased,
        jobs.queued,
        jobs.scheduled,
        workers.busy,
        workers.total,
        counts.active,
        if counts.lost > 0 {
            format!(" ({} lost)", counts.lost)
        } else {
            String::new()
        },
        throughput.succeeded + throughput.dead + throughput.cancelled,
    );
    ClusterStatus {
        summary,
        jobs,
        waiting_reasons,
        nodes: counts,
        workers,
        throughput,
    }
}
