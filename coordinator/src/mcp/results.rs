//! The tools' structured results (serde + JSON schema) and their mapping from
//! `kobo_protocol`'s wire types. Every result carries everything the model
//! needs: clients show it only `structuredContent` when present.

use std::time::{Duration, UNIX_EPOCH};

use kobo_protocol::{
    AttemptView, JobDetail, JobEventView, JobId, JobState, JobView, UnixMillis, Usage,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::args::JobRequirements;

/// Characters of a result `list_jobs` shows per job.
pub const LIST_PREVIEW_CHARS: usize = 200;

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStateName {
    /// Waiting for its start time or a retry backoff.
    Scheduled,
    /// Ready, waiting for a node that may run it (see queue_reason).
    Queued,
    /// Running on a node.
    Leased,
    /// Finished with a result.
    Succeeded,
    /// Failed for good: attempts used up or an error that is not retryable.
    Dead,
    /// Cancelled by request before it finished.
    Cancelled,
}

impl From<JobState> for JobStateName {
    fn from(state: JobState) -> JobStateName {
        match state {
            JobState::Scheduled => JobStateName::Scheduled,
            JobState::Queued => JobStateName::Queued,
            JobState::Leased => JobStateName::Leased,
            JobState::Succeeded => JobStateName::Succeeded,
            JobState::Dead => JobStateName::Dead,
            JobState::Cancelled => JobStateName::Cancelled,
        }
    }
}

impl From<JobStateName> for JobState {
    fn from(state: JobStateName) -> JobState {
        match state {
            JobStateName::Scheduled => JobState::Scheduled,
            JobStateName::Queued => JobState::Queued,
            JobStateName::Leased => JobState::Leased,
            JobStateName::Succeeded => JobState::Succeeded,
            JobStateName::Dead => JobState::Dead,
            JobStateName::Cancelled => JobState::Cancelled,
        }
    }
}

/// Whether a job is finished, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Finished with a result.
    Succeeded,
    /// Failed for good (see error).
    Dead,
    /// Cancelled by request.
    Cancelled,
    /// Not finished yet: scheduled, queued or leased (see state).
    Running,
}

impl From<JobState> for JobStatus {
    fn from(state: JobState) -> JobStatus {
        match state {
            JobState::Succeeded => JobStatus::Succeeded,
            JobState::Dead => JobStatus::Dead,
            JobState::Cancelled => JobStatus::Cancelled,
            JobState::Scheduled | JobState::Queued | JobState::Leased => JobStatus::Running,
        }
    }
}

/// `2026-11-24T09:15:02.123Z`.
pub fn rfc3339(ms: UnixMillis) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// At most `max` characters of `text` from character `offset`, whether more
/// follow, and the text's length in characters.
pub fn page(text: &str, offset: usize, max: usize) -> (String, bool, usize) {
    let total = text.chars().count();
    let slice: String = text.chars().skip(offset).take(max).collect();
    let more = offset.saturating_add(max) < total;
    (slice, more, total)
}

/// One job of a `submit_jobs` call.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SubmittedJob {
    pub job_id: JobId,
    pub state: JobStateName,
    /// False when the idempotency key matched an earlier job, which is returned instead of a new one.
    pub created: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The result of `submit_jobs`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SubmitJobsResult {
    /// The jobs' ids, in the order of the prompts.
    pub job_ids: Vec<JobId>,
    /// One entry per prompt, in order.
    pub jobs: Vec<SubmittedJob>,
    /// Jobs newly created (the others were earlier jobs with the same idempotency key).
    pub created: usize,
    /// What to do next.
    pub next_step: String,
}

/// Token counts of a finished job.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct JobUsage {
    /// The model that answered, as the backend named it.
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// When things happened to a job (RFC 3339, UTC) and how long they took.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct JobTimings {
    pub created_at: String,
    /// Not started before this.
    pub run_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// From submit to the first attempt's start, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<i64>,
    /// From submit to the end, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<i64>,
    /// Wall time of the successful LLM call, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_ms: Option<u64>,
    /// Time to the first token, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<u64>,
    /// Model load time the backend reported, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<u64>,
}

/// One page of a job's result text.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ResultPage {
    pub text: String,
    /// Where this page starts, in characters.
    pub offset: usize,
    /// The whole result's length in characters.
    pub total_chars: usize,
    /// Where the next page starts (pass it as `offset`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
}

/// One attempt (lease) of a job by a node.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct JobAttempt {
    pub attempt: u32,
    pub node_id: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// running, succeeded, failed, expired, node_lost or cancelled.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<&AttemptView> for JobAttempt {
    fn from(a: &AttemptView) -> JobAttempt {
        JobAttempt {
            attempt: a.attempt,
            node_id: a.node_id.clone(),
            started_at: rfc3339(a.started_at),
            finished_at: a.finished_at.map(rfc3339),
            outcome: a.outcome.clone(),
            error: a.error.clone(),
        }
    }
}

/// One state change of a job.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct JobEvent {
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<JobStateName>,
    pub to: JobStateName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<&JobEventView> for JobEvent {
    fn from(e: &JobEventView) -> JobEvent {
        JobEvent {
            at: rfc3339(e.at),
            from: e.from_state.map(Into::into),
            to: e.to_state.into(),
            node_id: e.node_id.clone(),
            attempt: e.attempt,
            detail: e.detail.clone(),
        }
    }
}

/// The result of `get_job`: one job in full.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct JobInfo {
    pub job_id: JobId,
    pub status: JobStatus,
    pub state: JobStateName,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub priority: i32,
    /// The node running it, or the one that ran its last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Attempts used so far.
    pub attempts: u32,
    pub max_attempts: u32,
    /// Why a queued job is not running: which nodes are excluded and why, or that the eligible ones are busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_reason: Option<String>,
    /// Why the router chose the node: its score terms, the best candidates, and why other nodes were excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_reason: Option<serde_json::Value>,
    /// The last error (why a job is dead, or why an attempt failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub requirements: JobRequirements,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub confidential: bool,
    /// The prompt and result are hidden from this caller.
    pub redacted: bool,
    /// The first characters of the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_preview: Option<String>,
    pub timings: JobTimings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<JobUsage>,
    /// A page of the result text (succeeded jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultPage>,
    /// Every attempt: node, outcome, error.
    pub attempt_history: Vec<JobAttempt>,
    /// Every state change, oldest first.
    pub events: Vec<JobEvent>,
}

impl JobInfo {
    pub fn from_detail(detail: &JobDetail, offset: usize, max_chars: usize) -> JobInfo {
        let job = &detail.job;
        let output = job.output.as_ref();
        let usage: Option<&Usage> = output.map(|o| &o.usage);
        let first_started = detail.attempts.iter().map(|a| a.started_at).min();
        let result = output.map(|o| {
            let (text, more, total) = page(&o.text, offset, max_chars);
            ResultPage {
                text,
                offset,
                total_chars: total,
                next_offset: more.then(|| offset + max_chars),
            }
        });
        let prompt_preview = detail
            .request
            .prompt
            .as_deref()
            .or_else(|| {
                detail
                    .request
                    .messages
                    .as_ref()?
                    .last()
                    .map(|m| m.content.as_str())
            })
            .map(|p| page(p, 0, LIST_PREVIEW_CHARS).0);
        JobInfo {
            job_id: job.id,
            status: job.state.into(),
            state: job.state.into(),
            kind: job.kind.clone(),
            model: job.model.clone(),
            priority: job.priority,
            node_id: job.node_id.clone(),
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            queue_reason: job.queue_reason.clone(),
            route_reason: job
                .route_reason
                .as_ref()
                .and_then(|r| serde_json::to_value(r).ok()),
            error: job.last_error.clone(),
            requirements: detail.requirements.clone().into(),
            idempotency_key: job.idempotency_key.clone(),
            confidential: job.confidential,
            redacted: job.redacted,
            prompt_preview,
            timings: JobTimings {
                created_at: rfc3339(job.created_at),
                run_at: rfc3339(job.run_at),
                first_started_at: first_started.map(rfc3339),
                finished_at: job.finished_at.map(rfc3339),
                wait_ms: first_started.map(|at| at - job.created_at),
                total_ms: job.finished_at.map(|at| at - job.created_at),
                llm_ms: usage.map(|u| u.duration_ms),
                first_token_ms: usage.and_then(|u| u.first_token_ms),
                load_ms: usage.and_then(|u| u.load_ms),
            },
            usage: output.map(|o| JobUsage {
                model: o.model.clone(),
                prompt_tokens: o.usage.prompt_tokens,
                completion_tokens: o.usage.completion_tokens,
            }),
            result,
            attempt_history: detail.attempts.iter().map(JobAttempt::from).collect(),
            events: detail.events.iter().map(JobEvent::from).collect(),
        }
    }
}

/// One job in a `list_jobs` page.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct JobSummary {
    pub job_id: JobId,
    pub status: JobStatus,
    pub state: JobStateName,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The first characters of the result (get_job has all of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_preview: Option<String>,
}

impl From<&JobView> for JobSummary {
    fn from(job: &JobView) -> JobSummary {
        JobSummary {
            job_id: job.id,
            status: job.state.into(),
            state: job.state.into(),
            kind: job.kind.clone(),
            model: job.model.clone(),
            node_id: job.node_id.clone(),
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            created_at: rfc3339(job.created_at),
            finished_at: job.finished_at.map(rfc3339),
            queue_reason: job.queue_reason.clone(),
            error: job.last_error.clone(),
            result_preview: job
                .output
                .as_ref()
                .map(|o| page(&o.text, 0, LIST_PREVIEW_CHARS).0),
        }
    }
}

/// The result of `list_jobs`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobSummary>,
    /// Jobs matching the filters, on every page.
    pub total: u64,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<JobId>,
}

/// The result of `cancel_job`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CancelResult {
    pub job_id: JobId,
    pub state: JobStateName,
    /// What happens next.
    pub note: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_split_on_characters_not_bytes() {
        let text = "日本語のテキスト";
        let (first, more, total) = page(text, 0, 3);
        assert_eq!((first.as_str(), more, total), ("日本語", true, 8));
        let (last, more, _) = page(text, 6, 3);
        assert_eq!((last.as_str(), more), ("スト", false));
        let (past_end, more, _) = page(text, 100, 3);
        assert_eq!((past_end.as_str(), more), ("", false));
    }

    #[test]
    fn unfinished_states_are_running() {
        for state in JobState::ALL {
            let status = JobStatus::from(state);
            assert_eq!(
                status == JobStatus::Running,
                !state.is_terminal(),
                "{state}"
            );
        }
    }
}
