//! The tools: descriptions a model can act on, input schemas, annotations,
//! and handlers that call the coordinator's API. Bad arguments and refused
//! calls come back as tool errors (`isError: true`) saying how to fix them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kobo_client::ClientError;
use rmcp::handler::server::common::{schema_for_empty_input, schema_for_input};
use rmcp::model::JsonObject;
use rmcp::service::RequestContext;
use rmcp::{Json, RoleServer, tool, tool_router};
use schemars::JsonSchema;

use super::args::{
    self, CancelJobArgs, ClusterStatusArgs, DEFAULT_PAGE_CHARS, GetJobArgs, ListJobsArgs,
    ListNodesArgs, MAX_PAGE_CHARS, SubmitJobsArgs, WaitJobsArgs,
};
use super::cluster::{self, ClusterSummary, NodeInfo, NodeList};
use super::results::{CancelResult, JobInfo, JobList, JobSummary, SubmitJobsResult, SubmittedJob};
use super::wait::{self, JobOutcome, ProgressSink, WaitError, WaitJobsResult};
use super::{KoboMcp, MAX_WAIT};

/// Characters of each result `wait_jobs` includes by default.
const DEFAULT_RESULT_CHARS: usize = 2000;
/// Characters of results one `wait_jobs` answer includes by default, over all
/// its jobs: a model's context is the limit, so many jobs get less each.
const WAIT_RESULT_BUDGET: usize = 50_000;

/// The input schema of a tool taking `T`.
fn input_schema<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    // Every argument type is a struct, so its schema is an object; the
    // fallback only keeps a mistake from crashing the server.
    schema_for_input::<T>().unwrap_or_else(|_| schema_for_empty_input())
}

/// A refused or failed call to the coordinator, as the model should read it.
fn failed(what: &str, err: impl Into<anyhow::Error>) -> String {
    let err: anyhow::Error = err.into();
    let text = format!("{err:#}");
    let client = err.chain().find_map(|e| e.downcast_ref::<ClientError>());
    let hint = if client.is_some_and(ClientError::is_not_found) {
        " Check the id: list_jobs shows recent jobs."
    } else if client.is_some_and(ClientError::is_unreachable) {
        " The coordinator may be down: retry later, or ask the user to check `kobo-coord serve`."
    } else {
        ""
    };
    format!("{what}: {text}.{hint}")
}

fn check_job_id(job_id: i64) -> Result<(), String> {
    if job_id <= 0 {
        return Err(format!(
            "`job_id` {job_id} is no job id: ids are positive integers (submit_jobs and list_jobs return them)"
        ));
    }
    Ok(())
}

#[tool_router(router = tool_router, vis = "pub(super)")]
impl KoboMcp {
    #[tool(
        description = "Submit LLM jobs to the kobo cluster; returns their ids at once, without waiting. \
            Give `prompt` for one job, or `prompts` for many (up to 1000, one job each, all \
            submitted in one transaction): fan independent work out in one call rather than \
            calling this tool repeatedly. `kind` decides which nodes may run the jobs (a node \
            runs only the kinds among its capabilities: see list_nodes); `requirements` adds \
            hard constraints (GPU, data location, confidential). Pass an `idempotency_key` to \
            make a retry of this call safe. Then call wait_jobs with the returned job_ids.",
        input_schema = input_schema::<SubmitJobsArgs>(),
        annotations(
            title = "Submit jobs",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn submit_jobs(&self, arguments: JsonObject) -> Result<Json<SubmitJobsResult>, String> {
        let args: SubmitJobsArgs = args::parse("submit_jobs", arguments)?;
        let jobs = args.to_jobs()?;
        let keys: Vec<Option<String>> = jobs.iter().map(|j| j.idempotency_key.clone()).collect();
        let answers = match jobs.as_slice() {
            [job] => self.client.submit(job).await.map(|answer| vec![answer]),
            _ => self.client.submit_batch(jobs).await.map(|batch| batch.jobs),
        }
        .map_err(|err| failed("the coordinator refused the jobs", err))?;
        let submitted: Vec<SubmittedJob> = answers
            .iter()
            .zip(keys)
            .map(|(answer, idempotency_key)| SubmittedJob {
                job_id: answer.id,
                state: answer.state.into(),
                created: answer.created,
                idempotency_key,
            })
            .collect();
        let job_ids: Vec<i64> = submitted.iter().map(|j| j.job_id).collect();
        Ok(Json(SubmitJobsResult {
            next_step: format!(
                "call wait_jobs with job_ids {job_ids:?} to collect the results (it waits up to 100 s per call)"
            ),
            created: submitted.iter().filter(|j| j.created).count(),
            job_ids,
            jobs: submitted,
        }))
    }

    #[tool(
        description = "Wait for jobs to finish, up to `timeout_secs` (default 100 s), and return each job's \
            status, node and the start of its result. Returns as soon as all are done. Jobs not \
            finished by the timeout come back with status \"running\": that is not an error, call \
            wait_jobs again with their ids to keep waiting. Sends progress notifications (done/total, \
            which nodes) about every 10 s. Cancelling this call stops the waiting only: the jobs \
            keep running (cancel_job stops a job). get_job returns a whole long result.",
        input_schema = input_schema::<WaitJobsArgs>(),
        annotations(
            title = "Wait for jobs",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn wait_jobs(
        &self,
        arguments: JsonObject,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<WaitJobsResult>, String> {
        let args: WaitJobsArgs = args::parse("wait_jobs", arguments)?;
        let ids = args.unique_ids()?;
        let timeout = match args.timeout_secs {
            None => self.options.default_wait,
            Some(secs) if Duration::from_secs(secs) <= MAX_WAIT => Duration::from_secs(secs),
            Some(secs) => {
                return Err(format!(
                    "`timeout_secs` is {secs} but at most {} s: wait that long, then call wait_jobs again for the jobs still running",
                    MAX_WAIT.as_secs()
                ));
            }
        };
        let result_chars = match args.result_chars {
            None => DEFAULT_RESULT_CHARS.min(WAIT_RESULT_BUDGET / ids.len()),
            Some(n) if n <= MAX_PAGE_CHARS => n,
            Some(n) => {
                return Err(format!(
                    "`result_chars` is {n} but at most {MAX_PAGE_CHARS}: use get_job with offset to page through a long result"
                ));
            }
        };
        let progress = context.meta.get_progress_token().map(|token| ProgressSink {
            peer: context.peer.clone(),
            token,
        });
        let started = Instant::now();
        let jobs = wait::wait_for_jobs(
            &self.client,
            &ids,
            timeout,
            self.options.progress_interval,
            progress,
            context.ct.clone(),
        )
        .await
        .map_err(|err| match err {
            WaitError::Cancelled => err.to_string(),
            WaitError::Api(err) => failed("waiting for the jobs failed", err),
        })?;
        let outcomes = jobs
            .iter()
            .map(|job| JobOutcome::from_view(job, result_chars))
            .collect();
        Ok(Json(WaitJobsResult::new(outcomes, started.elapsed())))
    }

    #[tool(
        description = "One job in full: state, node, why it is queued (queue_reason), every attempt (node, \
            outcome, error) and state change, token usage, timings, error, and its result text. \
            Long results come in pages: pass `offset` (characters) and `max_chars`; the answer's \
            result.next_offset is where the next page starts.",
        input_schema = input_schema::<GetJobArgs>(),
        annotations(
            title = "Get a job",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_job(&self, arguments: JsonObject) -> Result<Json<JobInfo>, String> {
        let args: GetJobArgs = args::parse("get_job", arguments)?;
        check_job_id(args.job_id)?;
        let max_chars = args.max_chars.unwrap_or(DEFAULT_PAGE_CHARS);
        if max_chars == 0 || max_chars > MAX_PAGE_CHARS {
            return Err(format!(
                "`max_chars` must be 1..={MAX_PAGE_CHARS} (got {max_chars}); page with `offset`"
            ));
        }
        let detail = self
            .client
            .job(args.job_id)
            .await
            .map_err(|err| failed(&format!("reading job {}", args.job_id), err))?;
        Ok(Json(JobInfo::from_detail(
            &detail,
            args.offset.unwrap_or(0),
            max_chars,
        )))
    }

    #[tool(
        description = "List jobs, newest first, optionally only those of one state, kind or node: each with \
            its state, node, attempts, why it waits or failed, and the start of its result. The answer \
            says how many jobs match (`total`); for the next page pass its `next_after` as `after`.",
        input_schema = input_schema::<ListJobsArgs>(),
        annotations(
            title = "List jobs",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_jobs(&self, arguments: JsonObject) -> Result<Json<JobList>, String> {
        let args: ListJobsArgs = args::parse("list_jobs", arguments)?;
        let query = args.query()?;
        let list = self
            .client
            .jobs(&query)
            .await
            .map_err(|err| failed("listing jobs", err))?;
        Ok(Json(JobList {
            total: list.total,
            next_after: list.next_after,
            jobs: list.jobs.iter().map(JobSummary::from).collect(),
        }))
    }

    #[tool(
        description = "Cancel a scheduled, queued or running job. A running job's agent aborts the LLM call \
            when its next heartbeat answer tells it. A job that already finished cannot be \
            cancelled: the answer says so.",
        input_schema = input_schema::<CancelJobArgs>(),
        annotations(
            title = "Cancel a job",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn cancel_job(&self, arguments: JsonObject) -> Result<Json<CancelResult>, String> {
        let args: CancelJobArgs = args::parse("cancel_job", arguments)?;
        check_job_id(args.job_id)?;
        let job = self
            .client
            .cancel(args.job_id)
            .await
            .map_err(|err| failed(&format!("cancelling job {}", args.job_id), err))?;
        Ok(Json(CancelResult {
            job_id: job.id,
            state: job.state.into(),
            note: "cancelled: it will not run again; if it was running, its node stops the LLM call within a heartbeat".into(),
        }))
    }

    #[tool(
        description = "The machines of the cluster (agents): status (active, lost, draining, drained), \
            region, capabilities (the kinds of job each runs), models, GPU, load (running and \
            max workers), last heartbeat, jobs done and failed, CPU and memory.",
        input_schema = input_schema::<ListNodesArgs>(),
        annotations(
            title = "List nodes",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_nodes(&self, arguments: JsonObject) -> Result<Json<NodeList>, String> {
        let args: ListNodesArgs = args::parse("list_nodes", arguments)?;
        let nodes = self
            .client
            .nodes()
            .await
            .map_err(|err| failed("listing nodes", err))?;
        let now = kobo_queue::store::unix_now_ms();
        Ok(Json(NodeList {
            nodes: nodes
                .iter()
                .filter(|node| args.status.is_none_or(|s| s == node.status.into()))
                .map(|node| NodeInfo::from_view(node, now))
                .collect(),
        }))
    }

    #[tool(
        description = "The cluster at a glance: unfinished jobs by state and kind (exact counts), the \
            most common reasons queued jobs wait, job totals, nodes by status, busy and free \
            workers, and throughput (the last minute: jobs finished, tokens, mean LLM time; the \
            last hour: jobs per minute, mean run and pickup times); for an admin key, usage per \
            key over the last 24 hours (requests, prompt and completion tokens, LLM seconds).",
        input_schema = schema_for_empty_input(),
        annotations(
            title = "Cluster status",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn cluster_status(&self, arguments: JsonObject) -> Result<Json<ClusterSummary>, String> {
        let _: ClusterStatusArgs = args::parse("cluster_status", arguments)?;
        cluster::cluster_status(&self.client)
            .await
            .map(Json)
            .map_err(|err| failed("reading the cluster status", err))
    }
}
