//! The tools' arguments as MCP clients send them (serde + JSON schema), their
//! checks (each failure says how to fix the call), and their mapping onto
//! `kobo_protocol` requests.

use kobo_protocol::{GenerationOptions, JobId, JobListQuery, Requirements, SubmitJob};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::cluster::NodeStatusName;
use super::results::JobStateName;
use kobo_protocol::validate::MAX_BATCH;

/// Most jobs one `wait_jobs` call waits for.
pub const MAX_WAIT_IDS: usize = 1000;
/// Most jobs one `list_jobs` page returns: enough to scan, small enough for a
/// model's context.
pub const MAX_LIST_LIMIT: u32 = 500;
/// Jobs a `list_jobs` page returns when the call names no limit.
pub const DEFAULT_LIST_LIMIT: u32 = 50;
/// Characters of a result one `get_job` page returns by default.
pub const DEFAULT_PAGE_CHARS: usize = 20_000;
/// Most characters of a result one call returns (a page of `get_job`, or
/// each job's preview in `wait_jobs`): about 25k tokens, what clients accept
/// from one tool call.
pub const MAX_PAGE_CHARS: usize = 100_000;
/// Kind of work when the call names none (the CLI's default too).
pub const DEFAULT_KIND: &str = "general_query";

/// Hard requirements a node must meet to run the jobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequirements {
    /// Capabilities the node must declare besides the job's kind, e.g. ["heavy_computation"].
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Only nodes with a GPU.
    #[serde(default)]
    pub gpu: bool,
    /// Data-residency area the node must be in: japan, europe, us, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_location: Option<String>,
    /// Only nodes declaring confidential_processing run the job; its prompt and result are sealed at rest and hidden from other submitters.
    #[serde(default)]
    pub confidential: bool,
}

impl From<JobRequirements> for Requirements {
    fn from(r: JobRequirements) -> Requirements {
        Requirements {
            capabilities: r.capabilities,
            gpu: r.gpu,
            data_location: r.data_location,
            confidential: r.confidential,
        }
    }
}

impl From<Requirements> for JobRequirements {
    fn from(r: Requirements) -> JobRequirements {
        JobRequirements {
            capabilities: r.capabilities,
            gpu: r.gpu,
            data_location: r.data_location,
            confidential: r.confidential,
        }
    }
}

/// Arguments of `submit_jobs`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJobsArgs {
    /// One prompt: submits one job. Give this or `prompts`.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Many prompts, one job each (at most 1000), submitted together in one transaction: the way to fan out independent work. Give this or `prompt`.
    #[serde(default)]
    pub prompts: Option<Vec<String>>,
    /// Kind of work, e.g. general_query, code_generation, documentation, data_analysis. Only nodes listing it among their capabilities run the job (see list_nodes). Default general_query.
    #[serde(default)]
    pub kind: Option<String>,
    /// Model to call, e.g. "qwen2.5" (Ollama naming). Only nodes serving it run the job. Default: each node's own default model.
    #[serde(default)]
    pub model: Option<String>,
    /// System prompt for every job of this call.
    #[serde(default)]
    pub system: Option<String>,
    /// Hard constraints on the node.
    #[serde(default)]
    pub requirements: JobRequirements,
    /// Prefer nodes in this region, e.g. "ap-northeast-1" (soft: nearer regions score higher; a busy preferred node is waited for a few seconds).
    #[serde(default)]
    pub prefer_region: Option<String>,
    /// Prefer this node, e.g. "tokyo-01" (soft; waited for a few seconds when busy).
    #[serde(default)]
    pub prefer_node: Option<String>,
    /// Higher runs first, -1000..1000. Default 0.
    #[serde(default)]
    pub priority: Option<i32>,
    /// Makes the call safe to repeat: a second call with the same key returns the jobs of the first instead of new ones. With `prompts`, job i gets the key "<key>-<i>".
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// A conversation or task id: the jobs of one session prefer the node that served it last (its prompt cache is warm there), waiting for it only briefly when it is busy.
    #[serde(default)]
    pub session: Option<String>,
    /// Attempts before a job is given up (dead). Default: the coordinator's (3).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Time limit of one attempt's LLM call, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Most tokens each answer may have.
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

impl SubmitJobsArgs {
    /// The jobs to submit, one per prompt, or what to fix in the call.
    pub fn to_jobs(&self) -> Result<Vec<SubmitJob>, String> {
        let (prompts, keyed_by_index) = match (&self.prompt, &self.prompts) {
            (Some(_), Some(_)) => {
                return Err(
                    "give either `prompt` (one job) or `prompts` (a list, one job each), not both"
                        .into(),
                );
            }
            (None, None) => {
                return Err(
                    "missing the work: give `prompt` (a string, one job) or `prompts` (a list of strings, one job each)"
                        .into(),
                );
            }
            (Some(prompt), None) => (vec![prompt.clone()], false),
            (None, Some(prompts)) => (prompts.clone(), true),
        };
        if prompts.is_empty() {
            return Err("`prompts` is empty: give at least one prompt".into());
        }
        if prompts.len() > MAX_BATCH {
            return Err(format!(
                "`prompts` has {} entries but one call takes at most {MAX_BATCH}: split them over several calls",
                prompts.len()
            ));
        }
        if let Some(idx) = prompts.iter().position(|p| p.trim().is_empty()) {
            let field = if keyed_by_index {
                format!("`prompts[{idx}]`")
            } else {
                "`prompt`".to_string()
            };
            return Err(format!("{field} is empty: every job needs a prompt"));
        }
        let kind = self.kind.clone().unwrap_or_else(|| DEFAULT_KIND.into());
        if kind.trim().is_empty() {
            return Err(format!(
                "`kind` is empty: name a kind of work such as {DEFAULT_KIND} (list_nodes shows each node's capabilities)"
            ));
        }
        let options =
            (self.temperature.is_some() || self.max_tokens.is_some()).then(|| GenerationOptions {
                temperature: self.temperature,
                max_tokens: self.max_tokens,
                ..GenerationOptions::default()
            });
        Ok(prompts
            .into_iter()
            .enumerate()
            .map(|(idx, prompt)| SubmitJob {
                kind: kind.clone(),
                model: self.model.clone(),
                prompt: Some(prompt),
                system: self.system.clone(),
                options: options.clone(),
                requirements: self.requirements.clone().into(),
                preferences: kobo_protocol::Preferences {
                    region: self.prefer_region.clone(),
                    node: self.prefer_node.clone(),
                },
                priority: self.priority.unwrap_or(0),
                max_attempts: self.max_attempts,
                timeout_ms: self.timeout_ms,
                idempotency_key: self.idempotency_key.as_ref().map(|key| {
                    if keyed_by_index {
                        format!("{key}-{idx}")
                    } else {
                        key.clone()
                    }
                }),
                session: self.session.clone(),
                ..SubmitJob::default()
            })
            .collect())
    }
}

/// Arguments of `wait_jobs`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitJobsArgs {
    /// Ids of the jobs to wait for (from submit_jobs or list_jobs), at most 1000.
    pub job_ids: Vec<JobId>,
    /// Longest to wait, in seconds: default 100, at most 300. Jobs not finished by then come back with status "running"; call wait_jobs again with their ids to keep waiting.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Characters of each job's result to include. Default: 2000, or less when waiting for many jobs; 0 for none. get_job returns the whole text.
    #[serde(default)]
    pub result_chars: Option<usize>,
}

impl WaitJobsArgs {
    /// The ids without repeats, in the order given.
    pub fn unique_ids(&self) -> Result<Vec<JobId>, String> {
        if self.job_ids.is_empty() {
            return Err("`job_ids` is empty: give the ids submit_jobs returned".into());
        }
        if self.job_ids.len() > MAX_WAIT_IDS {
            return Err(format!(
                "`job_ids` has {} ids but one call waits for at most {MAX_WAIT_IDS}: split them over several calls",
                self.job_ids.len()
            ));
        }
        if let Some(bad) = self.job_ids.iter().find(|id| **id <= 0) {
            return Err(format!(
                "`job_ids` holds {bad}, which is no job id: ids are positive integers from submit_jobs"
            ));
        }
        let mut seen = std::collections::HashSet::new();
        Ok(self
            .job_ids
            .iter()
            .copied()
            .filter(|id| seen.insert(*id))
            .collect())
    }
}

/// Arguments of `get_job`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetJobArgs {
    /// The job's id.
    pub job_id: JobId,
    /// Where the page of the result text starts, in characters. Default 0; use the previous answer's result.next_offset.
    #[serde(default)]
    pub offset: Option<usize>,
    /// Most characters of the result text to return: default 20000, at most 100000.
    #[serde(default)]
    pub max_chars: Option<usize>,
}

/// Arguments of `list_jobs`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListJobsArgs {
    /// Only jobs in this state.
    #[serde(default)]
    pub state: Option<JobStateName>,
    /// Only jobs of this kind, e.g. code_generation.
    #[serde(default)]
    pub kind: Option<String>,
    /// Only jobs run (or running) on this node, e.g. tokyo-01.
    #[serde(default)]
    pub node_id: Option<String>,
    /// The paging cursor: only jobs listed after this one (older, smaller ids); pass the previous page's next_after to get the next page.
    #[serde(default)]
    pub after: Option<JobId>,
    /// Jobs per page: default 50, at most 500.
    #[serde(default)]
    pub limit: Option<u32>,
}

impl ListJobsArgs {
    pub fn query(&self) -> Result<JobListQuery, String> {
        let limit = self.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if limit == 0 || limit > MAX_LIST_LIMIT {
            return Err(format!(
                "`limit` must be 1..={MAX_LIST_LIMIT} (got {limit}); page with `after` for more"
            ));
        }
        Ok(JobListQuery {
            state: self.state.map(Into::into),
            kind: self.kind.clone(),
            node_id: self.node_id.clone(),
            limit: Some(limit),
            after: self.after,
        })
    }
}

/// Arguments of `cancel_job`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelJobArgs {
    /// The job's id.
    pub job_id: JobId,
}

/// Arguments of `list_nodes`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListNodesArgs {
    /// Only nodes with this status.
    #[serde(default)]
    pub status: Option<NodeStatusName>,
}

/// Arguments of `cluster_status`: none.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterStatusArgs {}

/// Decodes a tool's arguments, or says which field is wrong and how.
pub fn parse<T: DeserializeOwned>(
    tool: &str,
    arguments: serde_json::Map<String, serde_json::Value>,
) -> Result<T, String> {
    serde_path_to_error::deserialize(serde_json::Value::Object(arguments)).map_err(|err| {
        let path = err.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at `{path}`")
        };
        format!(
            "invalid arguments for {tool}{at}: {}. Fix the call to match the tool's input schema",
            err.inner()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        match value {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }

    #[test]
    fn prompts_get_indexed_idempotency_keys() {
        let parsed: SubmitJobsArgs = parse(
            "submit_jobs",
            args(serde_json::json!({"prompts": ["a", "b"], "idempotency_key": "k"})),
        )
        .expect("valid");
        let jobs = parsed.to_jobs().expect("jobs");
        let keys: Vec<_> = jobs
            .iter()
            .map(|j| j.idempotency_key.clone().unwrap_or_default())
            .collect();
        assert_eq!(keys, ["k-0", "k-1"]);
        assert_eq!(jobs[0].kind, DEFAULT_KIND);
    }

    #[test]
    fn every_job_of_a_call_carries_its_session() {
        let parsed: SubmitJobsArgs = parse(
            "submit_jobs",
            args(serde_json::json!({"prompts": ["a", "b"], "session": "review-7"})),
        )
        .expect("valid");
        let jobs = parsed.to_jobs().expect("jobs");
        assert!(
            jobs.iter()
                .all(|j| j.session.as_deref() == Some("review-7"))
        );
    }

    #[test]
    fn one_prompt_keeps_its_key() {
        let parsed = SubmitJobsArgs {
            prompt: Some("a".into()),
            idempotency_key: Some("k".into()),
            ..SubmitJobsArgs::default()
        };
        let jobs = parsed.to_jobs().expect("jobs");
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].idempotency_key.as_deref(), Some("k"));
    }

    #[test]
    fn bad_arguments_name_the_field() {
        let err = parse::<SubmitJobsArgs>(
            "submit_jobs",
            args(serde_json::json!({"prompt": "a", "priority": "high"})),
        )
        .expect_err("a string priority");
        assert!(err.contains("`priority`"), "{err}");
        let err = parse::<SubmitJobsArgs>("submit_jobs", args(serde_json::json!({"promt": "a"})))
            .expect_err("unknown field");
        assert!(err.contains("promt"), "{err}");
        let both = SubmitJobsArgs {
            prompt: Some("a".into()),
            prompts: Some(vec!["b".into()]),
            ..SubmitJobsArgs::default()
        };
        assert!(both.to_jobs().expect_err("both").contains("not both"));
    }

    #[test]
    fn wait_ids_are_deduplicated_in_order() {
        let wait = WaitJobsArgs {
            job_ids: vec![3, 1, 3, 2],
            ..WaitJobsArgs::default()
        };
        assert_eq!(wait.unique_ids().expect("ids"), [3, 1, 2]);
        let empty = WaitJobsArgs::default();
        assert!(empty.unique_ids().expect_err("empty").contains("job_ids"));
    }
}
