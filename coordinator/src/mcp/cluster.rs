//! Nodes and the cluster as a whole: `list_nodes` entries and the
//! `cluster_status` summary. Exact counts (queue depth by state and kind,
//! totals, the last hour's throughput, nodes) come from the coordinator's
//! `GET /v1/status`; why jobs wait and the last minute's throughput from the
//! job listings.

use std::collections::BTreeMap;

use kobo_protocol::{
    ClusterStatus as StatusView, JobListQuery, JobState, JobView, NodeStatus, NodeView, UnixMillis,
    UsageQuery,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::results::{JobStateName, rfc3339};
use kobo_client::ApiClient;

/// Newest jobs looked at for the last minute's throughput: the jobs that
/// finished in the last minute are among them unless the cluster finishes
/// more than this many a minute.
pub const RECENT_SCAN: u32 = 1000;
/// Newest queued jobs looked at for the reasons jobs wait.
pub const REASON_SCAN: u32 = 500;
/// The short throughput window.
pub const LAST_MINUTE_MS: i64 = 60_000;
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

/// Unfinished jobs by state (exact counts).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct QueueDepth {
    /// Waiting for their start time or a retry backoff.
    pub scheduled: u64,
    /// Ready, waiting for a node.
    pub queued: u64,
    /// Running on nodes.
    pub leased: u64,
}

/// Unfinished jobs of one state and kind.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct QueueEntry {
    pub state: JobStateName,
    pub kind: String,
    pub jobs: u64,
    /// When the oldest of them became ready (queued), was submitted (scheduled) or leased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_at: Option<String>,
}

/// Why queued jobs wait, with how many of the newest queued jobs wait for that reason.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WaitingReason {
    pub reason: String,
    pub jobs: usize,
}

/// Jobs since the database began.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct JobTotals {
    pub submitted: u64,
    pub succeeded: u64,
    pub dead: u64,
    pub cancelled: u64,
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

/// Jobs that finished in the last minute (by the coordinator's clock).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct LastMinute {
    pub succeeded: usize,
    pub dead: usize,
    pub cancelled: usize,
    /// Tokens generated by the jobs that succeeded.
    pub completion_tokens: u64,
    /// Mean LLM call time of those jobs, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_llm_ms: Option<u64>,
}

/// Throughput over the last hour.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct LastHour {
    pub succeeded: u64,
    pub dead: u64,
    /// Attempts that ended without success (retried or not).
    pub failed_attempts: u64,
    /// Jobs finished (succeeded or dead) per minute, averaged over the hour.
    pub jobs_per_minute: f64,
    /// Mean time from lease to report of the attempts that ended, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_run_ms: Option<f64>,
    /// Mean time from ready to leased, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_pickup_ms: Option<f64>,
}

/// The result of `cluster_status`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ClusterSummary {
    /// One line for people.
    pub summary: String,
    pub jobs: QueueDepth,
    /// Unfinished jobs by state and kind.
    pub queue: Vec<QueueEntry>,
    /// The most common reasons queued jobs wait.
    pub waiting_reasons: Vec<WaitingReason>,
    pub totals: JobTotals,
    pub nodes: NodeCounts,
    pub workers: Workers,
    pub last_minute: LastMinute,
    pub last_hour: LastHour,
    /// Usage per key over the last 24 hours; only for an admin caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_last_day: Option<Vec<KeyUsage>>,
}

/// One key's usage, as the LLM servers reported it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct KeyUsage {
    /// The submitting actor (`apikey:<id>`, `local`, …).
    pub key: String,
    /// The API key's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub llm_seconds: f64,
}

const DAY_MS: i64 = 86_400_000;

/// Every key's usage over the last day when the caller is an admin, else
/// `None`: an admin may name another key's usage (here `local`, over an
/// empty window), anyone else is refused (403, not audited).
async fn usage_for_admin(client: &ApiClient) -> kobo_client::Result<Option<Vec<KeyUsage>>> {
    let now = kobo_queue::store::unix_now_ms();
    let probe = UsageQuery {
        key: Some("local".into()),
        since: Some(now),
        until: Some(now + 1),
        group: Some("key".into()),
    };
    match client.usage(&probe).await {
        Ok(_) => {}
        Err(kobo_client::ClientError::Api { status: 403, .. }) => return Ok(None),
        Err(err) => return Err(err),
    }
    let day = UsageQuery {
        since: Some(now - DAY_MS),
        group: Some("key".into()),
        ..UsageQuery::default()
    };
    let rows = client.usage(&day).await?;
    Ok(Some(
        rows.into_iter()
            .map(|r| KeyUsage {
                key: r.key.unwrap_or_default(),
                name: r.key_name,
                requests: r.requests,
                prompt_tokens: r.prompt_tokens,
                completion_tokens: r.completion_tokens,
                llm_seconds: r.llm_ms as f64 / 1000.0,
            })
            .collect(),
    ))
}

/// Reads the coordinator's status and the job listings, and sums them up.
pub async fn cluster_status(client: &ApiClient) -> kobo_client::Result<ClusterSummary> {
    let queued = JobListQuery {
        state: Some(JobState::Queued),
        limit: Some(REASON_SCAN),
        ..JobListQuery::default()
    };
    let recent = JobListQuery {
        limit: Some(RECENT_SCAN),
        ..JobListQuery::default()
    };
    let (status, queued, recent, usage) = tokio::try_join!(
        client.status(),
        client.jobs(&queued),
        client.jobs(&recent),
        usage_for_admin(client)
    )?;
    let mut summary = summarize(&status, &queued.jobs, &recent.jobs);
    summary.usage_last_day = usage;
    Ok(summary)
}

/// The summary from the coordinator's status, the newest queued jobs and
/// the newest jobs of any state.
pub fn summarize(status: &StatusView, queued: &[JobView], recent: &[JobView]) -> ClusterSummary {
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

    let mut nodes = NodeCounts::default();
    let mut workers = Workers::default();
    for card in &status.nodes {
        match card.node.status {
            NodeStatus::Active => {
                nodes.active += 1;
                workers.busy += card.node.running;
                workers.total += card.node.max_workers;
            }
            NodeStatus::Lost => nodes.lost += 1,
            NodeStatus::Draining => nodes.draining += 1,
            NodeStatus::Drained => nodes.drained += 1,
        }
    }
    workers.free = workers.total.saturating_sub(workers.busy);

    let mut last_minute = LastMinute::default();
    let mut llm_ms = Vec::new();
    let since = status.server_time - LAST_MINUTE_MS;
    for job in recent
        .iter()
        .filter(|job| job.finished_at.is_some_and(|at| at >= since))
    {
        match job.state {
            JobState::Succeeded => {
                last_minute.succeeded += 1;
                if let Some(output) = &job.output {
                    last_minute.completion_tokens += output.usage.completion_tokens;
                    llm_ms.push(output.usage.duration_ms);
                }
            }
            JobState::Dead => last_minute.dead += 1,
            JobState::Cancelled => last_minute.cancelled += 1,
            JobState::Scheduled | JobState::Queued | JobState::Leased => {}
        }
    }
    if !llm_ms.is_empty() {
        last_minute.mean_llm_ms = Some(llm_ms.iter().sum::<u64>() / llm_ms.len() as u64);
    }

    let recent_hour = &status.recent;
    let minutes = (recent_hour.window_ms as f64 / 60_000.0).max(1.0);
    let last_hour = LastHour {
        succeeded: recent_hour.succeeded,
        dead: recent_hour.dead,
        failed_attempts: recent_hour.failed_attempts,
        jobs_per_minute: (recent_hour.succeeded + recent_hour.dead) as f64 / minutes,
        mean_run_ms: recent_hour.mean_run_ms,
        mean_pickup_ms: recent_hour.mean_pickup_ms,
    };
    let jobs = QueueDepth {
        scheduled: status.totals.scheduled,
        queued: status.totals.queued,
        leased: status.totals.leased,
    };
    let summary = format!(
        "{} running, {} queued, {} scheduled; {} of {} workers busy on {} active node(s){}; {} finished in the last minute",
        jobs.leased,
        jobs.queued,
        jobs.scheduled,
        workers.busy,
        workers.total,
        nodes.active,
        if nodes.lost > 0 {
            format!(" ({} lost)", nodes.lost)
        } else {
            String::new()
        },
        last_minute.succeeded + last_minute.dead + last_minute.cancelled,
    );
    ClusterSummary {
        summary,
        jobs,
        queue: status
            .queue
            .iter()
            .map(|row| QueueEntry {
                state: row.state.into(),
                kind: row.kind.clone(),
                jobs: row.jobs,
                oldest_at: row.oldest_at.map(rfc3339),
            })
            .collect(),
        waiting_reasons,
        totals: JobTotals {
            submitted: status.totals.submitted,
            succeeded: status.totals.succeeded,
            dead: status.totals.dead,
            cancelled: status.totals.cancelled,
        },
        nodes,
        workers,
        last_minute,
        last_hour,
        usage_last_day: None,
    }
}
