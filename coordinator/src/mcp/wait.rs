//! Waiting for many jobs at once: long-poll waits on the coordinator (a
//! bounded number in flight), progress notifications while they run, an end
//! at the deadline or as soon as every job is finished, and a prompt stop
//! when the client cancels the call (the jobs themselves run on).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use kobo_protocol::{JobId, JobState, JobView};
use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::{Peer, RoleServer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::results::{JobStateName, JobStatus, page};
use kobo_client::ApiClient;

/// Long-poll waits in flight at once: the coordinator's HTTP/2 connection
/// takes a few hundred streams; the rest of the ids take turns.
pub const MAX_PARALLEL_WAITS: usize = 32;
/// Longest one long-poll wait lasts before its job takes a turn at the back
/// of the line, so that more jobs than [`MAX_PARALLEL_WAITS`] all get looked at.
pub const WAIT_SLICE: Duration = Duration::from_secs(10);

/// Where progress notifications go: the calling client, under the token its
/// request carried.
pub struct ProgressSink {
    pub peer: Peer<RoleServer>,
    pub token: ProgressToken,
}

/// Why a wait ended without an answer.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("the client cancelled the wait (the jobs keep running)")]
    Cancelled,
    #[error(transparent)]
    Api(#[from] anyhow::Error),
}

/// Waits until every job of `ids` is finished or `timeout` passes, and
/// returns the last view of each, in the order of `ids`.
pub async fn wait_for_jobs(
    client: &ApiClient,
    ids: &[JobId],
    timeout: Duration,
    progress_interval: Duration,
    progress: Option<ProgressSink>,
    cancel: CancellationToken,
) -> Result<Vec<JobView>, WaitError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut latest: HashMap<JobId, JobView> = HashMap::new();
    let mut line: VecDeque<JobId> = ids.iter().copied().collect();
    let mut in_flight: JoinSet<(JobId, kobo_client::Result<JobView>)> = JoinSet::new();
    let mut ticker = tokio::time::interval_at(started + progress_interval, progress_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !unfinished(ids, &latest).is_empty() {
        while in_flight.len() < MAX_PARALLEL_WAITS
            && let Some(id) = line.pop_front()
        {
            if is_finished(&latest, id) {
                continue;
            }
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(WAIT_SLICE);
            let client = client.clone();
            in_flight.spawn(async move { (id, client.wait(id, slice).await) });
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(WaitError::Cancelled),
            _ = tokio::time::sleep_until(deadline) => break,
            _ = ticker.tick() => {
                if let Some(sink) = &progress {
                    // The waits only answer when a job finishes: look at the
                    // others now, to say where they stand.
                    let others = unfinished(ids, &latest);
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(WaitError::Cancelled),
                        read = read_jobs(client, others, &mut latest) => read?,
                    }
                    let (done, message) = progress_message(ids, &latest);
                    let param = ProgressNotificationParam::new(sink.token.clone(), done as f64)
                        .with_total(ids.len() as f64)
                        .with_message(message);
                    if let Err(err) = sink.peer.notify_progress(param).await {
                        tracing::debug!(error = %err, "could not send a progress notification");
                    }
                }
            }
            Some(joined) = in_flight.join_next() => {
                let (id, answer) = joined.context("a wait task failed")?;
                let job = answer.with_context(|| format!("waiting for job {id}"))?;
                if !job.state.is_terminal() && Instant::now() < deadline {
                    line.push_back(id);
                }
                record(&mut latest, job);
            }
        }
    }
    // Waits cut at the deadline, and jobs that never had a turn: their state now.
    in_flight.abort_all();
    let others = unfinished(ids, &latest);
    tokio::select! {
        _ = cancel.cancelled() => return Err(WaitError::Cancelled),
        read = read_jobs(client, others, &mut latest) => read?,
    }
    ids.iter()
        .map(|id| {
            latest
                .remove(id)
                .ok_or_else(|| WaitError::Api(anyhow::anyhow!("no answer about job {id}")))
        })
        .collect()
}

fn is_finished(latest: &HashMap<JobId, JobView>, id: JobId) -> bool {
    latest.get(&id).is_some_and(|job| job.state.is_terminal())
}

fn unfinished(ids: &[JobId], latest: &HashMap<JobId, JobView>) -> Vec<JobId> {
    ids.iter()
        .copied()
        .filter(|id| !is_finished(latest, *id))
        .collect()
}

/// Keeps the newer view of a job; a finished job stays finished even when an
/// older answer about it arrives late.
fn record(latest: &mut HashMap<JobId, JobView>, job: JobView) {
    if !is_finished(latest, job.id) {
        latest.insert(job.id, job);
    }
}

/// Reads the jobs' current state (a wait of zero), a bounded number at once.
async fn read_jobs(
    client: &ApiClient,
    ids: Vec<JobId>,
    latest: &mut HashMap<JobId, JobView>,
) -> anyhow::Result<()> {
    let mut answers = futures_util::stream::iter(ids)
        .map(|id| async move { (id, client.wait(id, Duration::ZERO).await) })
        .buffer_unordered(MAX_PARALLEL_WAITS);
    while let Some((id, answer)) = answers.next().await {
        record(latest, answer.with_context(|| format!("reading job {id}"))?);
    }
    Ok(())
}

/// How many of `ids` are finished, and a one-line summary: done/total,
/// outcomes, and which nodes run the others.
pub fn progress_message(ids: &[JobId], latest: &HashMap<JobId, JobView>) -> (usize, String) {
    let mut by_state: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut by_node: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unknown = 0;
    for id in ids {
        match latest.get(id) {
            Some(job) => {
                *by_state.entry(job.state.as_str()).or_default() += 1;
                if job.state == JobState::Leased
                    && let Some(node) = &job.node_id
                {
                    *by_node.entry(node.as_str()).or_default() += 1;
                }
            }
            None => unknown += 1,
        }
    }
    let count = |state: JobState| by_state.get(state.as_str()).copied().unwrap_or(0);
    let done = count(JobState::Succeeded) + count(JobState::Dead) + count(JobState::Cancelled);
    let mut message = format!("{done}/{} done", ids.len());
    let outcomes: Vec<String> = [JobState::Succeeded, JobState::Dead, JobState::Cancelled]
        .into_iter()
        .filter(|s| count(*s) > 0)
        .map(|s| format!("{} {s}", count(s)))
        .collect();
    if !outcomes.is_empty() {
        message.push_str(&format!(" ({})", outcomes.join(", ")));
    }
    if !by_node.is_empty() {
        let nodes: Vec<String> = by_node
            .iter()
            .map(|(node, n)| format!("{node} ×{n}"))
            .collect();
        message.push_str(&format!("; running on {}", nodes.join(", ")));
    }
    let waiting = count(JobState::Queued) + count(JobState::Scheduled);
    if waiting > 0 {
        message.push_str(&format!("; {waiting} waiting for a node"));
    }
    if unknown > 0 {
        message.push_str(&format!("; {unknown} not checked yet"));
    }
    (done, message)
}

/// Where one job stands, as `wait_jobs` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct JobOutcome {
    pub job_id: JobId,
    /// succeeded, dead, cancelled, or running (not finished yet).
    pub status: JobStatus,
    pub state: JobStateName,
    /// The node running it, or the one that ran its last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The start of the result text (see result_truncated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The result is longer than `result`: get_job returns all of it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub result_truncated: bool,
    /// The result's length in characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_chars: Option<usize>,
    /// The last error (why a job is dead, or why an attempt failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why a queued job is not running yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_reason: Option<String>,
    /// Wall time of the LLM call, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_ms: Option<u64>,
    /// The prompt and result are hidden from this caller (a confidential job of another submitter).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
}

impl JobOutcome {
    pub fn from_view(job: &JobView, result_chars: usize) -> JobOutcome {
        let output = job.output.as_ref();
        let (result, truncated, total) = match output {
            Some(output) if result_chars > 0 => {
                let (text, more, total) = page(&output.text, 0, result_chars);
                (Some(text), more, Some(total))
            }
            Some(output) => (None, true, Some(output.text.chars().count())),
            None => (None, false, None),
        };
        JobOutcome {
            job_id: job.id,
            status: job.state.into(),
            state: job.state.into(),
            node_id: job.node_id.clone(),
            result,
            result_truncated: truncated,
            result_chars: total,
            error: job.last_error.clone(),
            queue_reason: job.queue_reason.clone(),
            llm_ms: output.map(|o| o.usage.duration_ms),
            redacted: job.redacted,
        }
    }
}

/// The result of `wait_jobs`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WaitJobsResult {
    /// Every job finished (succeeded, dead or cancelled).
    pub all_done: bool,
    pub total: usize,
    pub done: usize,
    pub succeeded: usize,
    pub dead: usize,
    pub cancelled: usize,
    /// Jobs not finished when the wait ended: call wait_jobs again with their ids to keep waiting.
    pub running: usize,
    /// How long this call waited, ms.
    pub waited_ms: u64,
    /// One entry per job id, in the order given.
    pub jobs: Vec<JobOutcome>,
}

impl WaitJobsResult {
    pub fn new(jobs: Vec<JobOutcome>, waited: Duration) -> WaitJobsResult {
        let count = |status| jobs.iter().filter(|j| j.status == status).count();
        let running = count(JobStatus::Running);
        WaitJobsResult {
            all_done: running == 0,
            total: jobs.len(),
            done: jobs.len() - running,
            succeeded: count(JobStatus::Succeeded),
            dead: count(JobStatus::Dead),
            cancelled: count(JobStatus::Cancelled),
            running,
            waited_ms: waited.as_millis() as u64,
            jobs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: JobId, state: &str, node: Option<&str>) -> JobView {
        serde_json::from_value(serde_json::json!({
            "id": id, "state": state, "kind": "general_query", "priority": 0,
            "attempts": 1, "max_attempts": 3, "node_id": node, "lease_token": 1,
            "created_at": 0, "updated_at": 0, "run_at": 0,
            "confidential": false, "redacted": false,
        }))
        .unwrap_or_else(|err| panic!("a job view: {err}"))
    }

    #[test]
    fn progress_says_done_of_total_and_which_nodes() {
        let ids = [1, 2, 3, 4, 5, 6];
        let latest: HashMap<JobId, JobView> = [
            job(1, "succeeded", Some("tokyo-01")),
            job(2, "dead", Some("osaka-01")),
            job(3, "leased", Some("tokyo-01")),
            job(4, "leased", Some("tokyo-01")),
            job(5, "queued", None),
        ]
        .into_iter()
        .map(|job| (job.id, job))
        .collect();
        let (done, message) = progress_message(&ids, &latest);
        assert_eq!(done, 2);
        assert_eq!(
            message,
            "2/6 done (1 succeeded, 1 dead); running on tokyo-01 ×2; 1 waiting for a node; 1 not checked yet"
        );
    }

    #[test]
    fn a_finished_job_stays_finished() {
        let mut latest = HashMap::new();
        record(&mut latest, job(7, "succeeded", Some("tokyo-01")));
        record(&mut latest, job(7, "leased", Some("tokyo-01")));
        assert_eq!(latest[&7].state, JobState::Succeeded);
        assert_eq!(unfinished(&[7, 8], &latest), [8]);
    }

    #[test]
    fn outcomes_count_running_jobs() {
        let outcomes = vec![
            JobOutcome::from_view(&job(1, "succeeded", Some("a")), 10),
            JobOutcome::from_view(&job(2, "queued", None), 10),
        ];
        let result = WaitJobsResult::new(outcomes, Duration::from_millis(1500));
        assert!(!result.all_done);
        assert_eq!((result.done, result.running, result.succeeded), (1, 1, 1));
        assert_eq!(result.jobs[1].status, JobStatus::Running);
        assert_eq!(result.waited_ms, 1500);
    }
}
