//! Jobs: what a client submits ([`SubmitJob`]) and reads back ([`JobView`],
//! [`JobDetail`]), and the LLM call an agent runs ([`LlmRequest`], [`LlmOutput`]).

use serde::{Deserialize, Serialize};

use crate::{JobId, UnixMillis};

/// The life of a job:
/// `scheduled → queued → leased → succeeded | dead | cancelled`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for `run_at` or a retry backoff.
    Scheduled,
    /// Ready; waiting for a node that may run it.
    Queued,
    /// Held by a node under a lease.
    Leased,
    Succeeded,
    /// Attempts used up, or failed with an error that is not retryable.
    Dead,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Leased,
        JobState::Succeeded,
        JobState::Dead,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Leased => "leased",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        JobState::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// Succeeded, dead and cancelled are final: nothing changes a job after.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// Sampling options, mapped onto each backend's own names
/// (`max_tokens` is Ollama's `num_predict`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GenerationOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// Hard requirements: a node that fails one never gets the job.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// Capabilities the node must declare, besides the job's kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gpu: bool,
    /// A data-residency area (`japan`, `europe`, `us`, ...) the node must be in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_location: Option<String>,
    /// Only nodes declaring `confidential_processing` may run the job.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confidential: bool,
}

/// Soft preferences: they move the choice but never exclude a node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The body of `POST /v1/jobs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// The kind of work; a node runs only kinds among its capabilities.
    pub kind: String,
    /// The model to call; when absent the node uses its default model. When
    /// present, only nodes serving it may take the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<GenerationOptions>,
    /// `"json"` or a JSON schema, passed to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<serde_json::Value>,
    #[serde(default)]
    pub requirements: Requirements,
    #[serde(default)]
    pub preferences: Preferences,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Limit for one attempt's LLM call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Do not run before this time (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<UnixMillis>,
    /// A second submit with the same key returns the first job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// A conversation or user this job belongs to: it prefers the node that
    /// served the session last (its prompt cache is warm there), for a
    /// short wait (`--session-wait-ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl SubmitJob {
    /// The LLM call an agent makes for this job.
    pub fn llm_request(&self) -> LlmRequest {
        LlmRequest {
            model: self.model.clone(),
            prompt: self.prompt.clone(),
            messages: self.messages.clone(),
            system: self.system.clone(),
            options: self.options.clone(),
            format: self.format.clone(),
            gateway: None,
        }
    }
}

/// The body of `POST /v1/jobs/batch`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch {
    pub jobs: Vec<SubmitJob>,
}

/// The answer to `POST /v1/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubmitResponse {
    pub id: JobId,
    pub state: JobState,
    /// False when an earlier job with the same idempotency key was returned.
    pub created: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubmitBatchResponse {
    pub jobs: Vec<SubmitResponse>,
}

/// One LLM call, as the agent runs it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LlmRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<GenerationOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<serde_json::Value>,
    /// A gateway call (an OpenAI or Ollama API request) instead of the
    /// fields above: the agent posts it to its backend and streams the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<crate::GatewayCall>,
}

/// Token counts and timings of one LLM call.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Wall time of the whole LLM call as the agent measured it.
    pub duration_ms: u64,
    /// Time to the first token, when the backend streamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<u64>,
    /// Model load time reported by the backend (Ollama `load_duration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<u64>,
}

/// What a successful LLM call produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LlmOutput {
    pub text: String,
    /// The model that answered, as the backend named it.
    pub model: String,
    pub usage: Usage,
}

/// A job as `GET /v1/jobs` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobView {
    pub id: JobId,
    pub state: JobState,
    pub kind: String,
    pub model: Option<String>,
    pub priority: i32,
    pub attempts: u32,
    pub max_attempts: u32,
    /// The node holding the lease, or the node that ran the last attempt.
    pub node_id: Option<String>,
    pub lease_token: i64,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub run_at: UnixMillis,
    pub finished_at: Option<UnixMillis>,
    pub last_error: Option<String>,
    /// Why a queued job is not running yet, when the coordinator knows.
    pub queue_reason: Option<String>,
    /// A queued job's place in its kind's queue: how many jobs will be
    /// leased before it (0: it is next). Only on `GET /v1/jobs/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
    /// When a queued job is expected to start: its place over the rate jobs
    /// finished in the last minutes; none when nothing finished lately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_start_at: Option<UnixMillis>,
    pub idempotency_key: Option<String>,
    /// Only nodes declaring `confidential_processing` run it; its prompt and
    /// result are sealed at rest.
    pub confidential: bool,
    /// Who submitted it (`apikey:<id>`, `local`).
    pub submitted_by: Option<String>,
    /// The prompt and result are withheld from this caller (confidential
    /// job, not the caller's own).
    pub redacted: bool,
    /// Why the job went where it went: the chosen node, how, the score
    /// terms of the best candidates, and why others were excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_reason: Option<crate::RouteReason>,
    pub output: Option<LlmOutput>,
}

/// One lease of a job by a node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttemptView {
    pub attempt: u32,
    pub lease_token: i64,
    pub node_id: String,
    pub started_at: UnixMillis,
    pub finished_at: Option<UnixMillis>,
    /// `running`, `succeeded`, `failed`, `expired`, `node_lost`, `cancelled`.
    pub outcome: String,
    pub error: Option<String>,
}

/// One state change of a job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobEventView {
    pub at: UnixMillis,
    pub from_state: Option<JobState>,
    pub to_state: JobState,
    pub node_id: Option<String>,
    pub attempt: u32,
    pub detail: Option<String>,
}

/// `GET /v1/jobs/{id}`: the job, its request, its attempts and its events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobDetail {
    pub job: JobView,
    pub request: LlmRequest,
    pub requirements: Requirements,
    pub preferences: Preferences,
    pub timeout_ms: Option<u64>,
    pub attempts: Vec<AttemptView>,
    pub events: Vec<JobEventView>,
}

/// `GET /v1/jobs` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobListQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// At most this many, newest first (default 100, at most 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The paging cursor: only jobs listed after this one, i.e. with a
    /// smaller id (pass the previous page's `next_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<JobId>,
}

/// `GET /v1/jobs`: a page of jobs, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Jobs matching the filters (state, kind, node), on every page.
    #[serde(default)]
    pub total: u64,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<JobId>,
}

/// `GET /v1/jobs/{id}/wait` query: block until the job is terminal or the
/// timeout passes; the answer is the job either way.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// How a schedule treats slots missed while the coordinator was down.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// One job for all the missed slots (the latest).
    #[default]
    Once,
    /// One job per missed slot (at most 100).
    All,
    /// No job for missed slots; only slots from now on.
    None,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Once => "once",
            CatchUp::All => "all",
            CatchUp::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<CatchUp> {
        [CatchUp::Once, CatchUp::All, CatchUp::None]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// `POST /v1/schedules`: a recurring job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleCreate {
    pub name: String,
    /// The `cron` crate's syntax with seconds, in UTC: `0 */15 * * * *`.
    pub cron: String,
    pub job: SubmitJob,
    #[serde(default)]
    pub catch_up: CatchUp,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScheduleView {
    pub name: String,
    pub cron: String,
    /// Always `UTC`.
    pub timezone: String,
    pub catch_up: CatchUp,
    pub paused: bool,
    pub next_fire_at: UnixMillis,
    pub last_fired_at: Option<UnixMillis>,
    pub last_job_id: Option<JobId>,
    pub created_at: UnixMillis,
    pub created_by: String,
    pub kind: String,
}
