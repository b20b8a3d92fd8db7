//! The job commands: `submit`, `jobs`, `job`, `cancel`, with their human
//! tables and `--json` outputs.

use super::*;

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The prompt; `-` reads it from standard input.
    pub prompt: Option<String>,
    /// A whole job as JSON (the body of POST /v1/jobs); `-` for standard input.
    #[arg(long, conflicts_with = "prompt")]
    pub file: Option<PathBuf>,
    /// Kind of work; a node must list it among its capabilities.
    #[arg(long, default_value = "general_query")]
    pub kind: String,
    /// Model to call; only nodes serving it may run the job.
    #[arg(long)]
    pub model: Option<String>,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub priority: i32,
    /// Attempts before the job is dead (default: the coordinator's, 3).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Per-attempt time limit of the LLM call (ms).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Start no sooner than this many ms from now.
    #[arg(long)]
    pub delay_ms: Option<u64>,
    /// A second submit with the same key returns the first job.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// A conversation id: jobs of one session prefer the node that served
    /// it last (warm prompt cache), waiting for it at most --session-wait-ms.
    #[arg(long)]
    pub session: Option<String>,
    /// Extra capabilities the node must have (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub require: Vec<String>,
    /// Only GPU nodes.
    #[arg(long)]
    pub gpu: bool,
    /// Data must stay in this area (japan, europe, us, ...).
    #[arg(long)]
    pub data_location: Option<String>,
    /// Only nodes declaring confidential_processing.
    #[arg(long)]
    pub confidential: bool,
    /// Prefer nodes in this region (soft; nearness counts too).
    #[arg(long)]
    pub prefer_region: Option<String>,
    /// Prefer this node (soft; waited for a bounded time when busy).
    #[arg(long)]
    pub prefer_node: Option<String>,
    /// Sampling temperature passed to the model.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Most tokens the model may generate.
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Wait for the job to finish and print its result.
    #[arg(long)]
    pub wait: bool,
    /// Print the answer's tokens as they arrive (through the gateway's
    /// OpenAI route; needs --model).
    #[arg(long, conflicts_with_all = ["file", "wait", "delay_ms", "idempotency_key"], requires = "model")]
    pub stream: bool,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only jobs in this state: scheduled, queued, leased, succeeded, dead or cancelled.
    #[arg(long, value_parser = parse_state)]
    pub state: Option<JobState>,
    /// Only jobs of this kind, e.g. code_generation.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only jobs run (or running) on this node, e.g. tokyo-01.
    #[arg(long)]
    pub node: Option<String>,
    /// Jobs per page, newest first (at most 10,000).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// The next page: only jobs listed after this id (older ones); the
    /// footer of a page names the id to pass.
    #[arg(long, value_name = "ID")]
    pub after: Option<JobId>,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The job id.
    pub id: i64,
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::parse(s).ok_or_else(|| {
        let all: Vec<_> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown state {s:?}; one of {}", all.join(", "))
    })
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    if args.stream {
        return submit_stream(&args).await;
    }
    let job = match &args.file {
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                read_arg_or_stdin("-")?
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?
            };
            serde_json::from_str::<SubmitJob>(&text)
                .with_context(|| format!("parsing job {}", path.display()))?
        }
        None => {
            let Some(prompt) = &args.prompt else {
                bail!("give a prompt (or `-` for standard input, or --file job.json)");
            };
            let options = (args.temperature.is_some() || args.max_tokens.is_some()).then(|| {
                GenerationOptions {
                    temperature: args.temperature,
                    max_tokens: args.max_tokens,
                    ..GenerationOptions::default()
                }
            });
            SubmitJob {
                kind: args.kind.clone(),
                model: args.model.clone(),
                prompt: Some(read_arg_or_stdin(prompt)?),
                system: args.system.clone(),
                options,
                requirements: Requirements {
                    capabilities: args.require.clone(),
                    gpu: args.gpu,
                    data_location: args.data_location.clone(),
                    confidential: args.confidential,
                },
                preferences: Preferences {
                    region: args.prefer_region.clone(),
                    node: args.prefer_node.clone(),
                },
                priority: args.priority,
                max_attempts: args.max_attempts,
                timeout_ms: args.timeout_ms,
                run_at: args
                    .delay_ms
                    .map(|d| kobo_queue::store::unix_now_ms() + d as i64),
                idempotency_key: args.idempotency_key.clone(),
                session: args.session.clone(),
                ..SubmitJob::default()
            }
        }
    };
    let client = args.client.client()?;
    let answer = client.submit(&job).await?;
    if !args.wait {
        if args.client.json {
            return print_json(&answer);
        }
        println!("{}", answer.id);
        return Ok(());
    }
    let job = client.wait_terminal(answer.id).await?;
    if args.client.json {
        return print_json(&job);
    }
    match (&job.state, &job.output) {
        (JobState::Succeeded, Some(output)) => {
            println!("{}", output.text);
            Ok(())
        }
        _ => bail!(
            "job {} ended {}{}",
            job.id,
            job.state,
            job.last_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
    }
}

pub async fn jobs(args: JobsArgs) -> anyhow::Result<()> {
    let query = JobListQuery {
        state: args.state,
        kind: args.kind.clone(),
        node_id: args.node.clone(),
        limit: Some(args.limit),
        after: args.after,
    };
    let list = args.client.client()?.jobs(&query).await?;
    if args.client.json {
        return print_json(&list);
    }
    let footer = page_footer(list.jobs.len(), list.total, list.next_after);
    let mut t = table(&[
        "id",
        "state",
        "kind",
        "model",
        "node",
        "attempts",
        "created",
        "result / reason",
    ]);
    for job in &list.jobs {
        t.add_row(vec![
            job.id.to_string(),
            job.state.to_string(),
            job.kind.clone(),
            job.model.clone().unwrap_or_else(|| "-".into()),
            job.node_id.clone().unwrap_or_else(|| "-".into()),
            format!("{}/{}", job.attempts, job.max_attempts),
            format_time(Some(job.created_at)),
            summary(job),
        ]);
    }
    println!("{t}");
    println!("{footer}");
    Ok(())
}

/// What a page shows of the whole: `50 of 1,234 (use --limit / --after 1184
/// for more)`, or `3 of 3` when nothing is left out.
fn page_footer(shown: usize, total: u64, next_after: Option<JobId>) -> String {
    match next_after {
        Some(id) => format!(
            "{} of {} (use --limit / --after {id} for more)",
            thousands(shown as u64),
            thousands(total)
        ),
        None => format!("{} of {}", thousands(shown as u64), thousands(total)),
    }
}

/// `1234567` → `1,234,567`.
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn summary(job: &JobView) -> String {
    match job.state {
        JobState::Succeeded => job
            .output
            .as_ref()
            .map(|o| head(&o.text, 50))
            .unwrap_or_default(),
        JobState::Dead => job
            .last_error
            .as_deref()
            .map(|e| head(e, 50))
            .unwrap_or_default(),
        JobState::Queued => job.queue_reason.clone().unwrap_or_default(),
        JobState::Scheduled => format!("runs at {}", format_time(Some(job.run_at))),
        JobState::Leased | JobState::Cancelled => String::new(),
    }
}

pub async fn job(args: JobArgs) -> anyhow::Result<()> {
    let detail = args.client.client()?.job(args.id).await?;
    if args.client.json {
        return print_json(&detail);
    }
    print_job(&detail);
    Ok(())
}

fn print_job(detail: &JobDetail) {
    let job = &detail.job;
    println!(
        "job {}  {}  kind={}  model={}",
        job.id,
        job.state,
        job.kind,
        job.model.as_deref().unwrap_or("-")
    );
    println!(
        "  priority {}  attempts {}/{}  node {}",
        job.priority,
        job.attempts,
        job.max_attempts,
        job.node_id.as_deref().unwrap_or("-")
    );
    println!(
        "  created {}  finished {}",
        format_time(Some(job.created_at)),
        format_time(job.finished_at)
    );
    if let Some(reason) = &job.queue_reason {
        println!("  waiting: {reason}");
    }
    if let Some(position) = job.queue_position {
        println!(
            "  queue position {position}  expected start {}",
            format_time(job.estimated_start_at)
        );
    }
    if let Some(err) = &job.last_error {
        println!("  last error: {err}");
    }
    if let Some(reason) = &job.route_reason {
        print_route_reason(reason);
    }
    if let Some(output) = &job.output {
        println!(
            "  result ({} prompt + {} completion tokens, {} ms, model {}):",
            output.usage.prompt_tokens,
            output.usage.completion_tokens,
            output.usage.duration_ms,
            output.model
        );
        for line in output.text.lines() {
            println!("    {line}");
        }
    }
    if !detail.attempts.is_empty() {
        let mut t = table(&[
            "attempt", "lease", "node", "started", "finished", "outcome", "error",
        ]);
        for a in &detail.attempts {
            t.add_row(vec![
                a.attempt.to_string(),
                a.lease_token.to_string(),
                a.node_id.clone(),
                format_time(Some(a.started_at)),
                format_time(a.finished_at),
                a.outcome.clone(),
                a.error.as_deref().map(|e| head(e, 60)).unwrap_or_default(),
            ]);
        }
        println!("{t}");
    }
    let mut t = table(&["at", "from", "to", "node", "attempt", "detail"]);
    for e in &detail.events {
        t.add_row(vec![
            format_time(Some(e.at)),
            e.from_state
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            e.to_state.to_string(),
            e.node_id.clone().unwrap_or_else(|| "-".into()),
            e.attempt.to_string(),
            e.detail.as_deref().map(|d| head(d, 60)).unwrap_or_default(),
        ]);
    }
    println!("{t}");
}

/// `routed to tokyo-01 (hand-off; best-ranked node)` and the score table.
fn print_route_reason(reason: &kobo_protocol::RouteReason) {
    println!(
        "  routed to {} ({}; {}{})",
        reason.chosen,
        reason.how.as_str(),
        reason.note,
        reason
            .locality
            .as_deref()
            .map(|l| format!("; locality: {l}"))
            .unwrap_or_default()
    );
    if !reason.ranked.is_empty() {
        let mut t = table(&[
            "node",
            "total",
            "load",
            "cpu",
            "speed",
            "rtt",
            "region",
            "node pref",
            "special.",
            "model",
        ]);
        for r in &reason.ranked {
            let term = |value: f64| format!("{value:.2}");
            let terms = &r.terms;
            t.add_row(vec![
                r.node.clone(),
                term(terms.total),
                term(terms.load),
                term(terms.cpu),
                term(terms.speed),
                term(terms.rtt),
                term(terms.region),
                term(terms.node),
                term(terms.specialization),
                term(terms.model_loaded),
            ]);
        }
        println!("{t}");
    }
    for (node, why) in &reason.excluded {
        println!("  excluded {node}: {why}");
    }
}

pub async fn cancel(args: JobArgs) -> anyhow::Result<()> {
    let job = args.client.client()?.cancel(args.id).await?;
    if args.client.json {
        return print_json(&job);
    }
    println!("job {} {}", job.id, job.state);
    Ok(())
}

/// `submit --stream`: the prompt as a streamed chat completion through the
/// gateway, tokens printed as they arrive; a stream cut short is an error.
async fn submit_stream(args: &SubmitArgs) -> anyhow::Result<()> {
    let Some(prompt) = &args.prompt else {
        bail!("give a prompt (or `-` for standard input)");
    };
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(serde_json::json!({"role": "system", "content": system}));
    }
    messages.push(serde_json::json!({"role": "user", "content": read_arg_or_stdin(prompt)?}));
    let mut body = serde_json::json!({
        "model": args.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(t) = args.temperature {
        body["temperature"] = t.into();
    }
    if let Some(n) = args.max_tokens {
        body["max_tokens"] = n.into();
    }
    let mut headers = vec![
        ("x-kobo-kind", args.kind.clone()),
        ("x-kobo-priority", args.priority.to_string()),
    ];
    if args.gpu {
        headers.push(("x-kobo-gpu", "true".into()));
    }
    if args.confidential {
        headers.push(("x-kobo-confidential", "true".into()));
    }
    if let Some(area) = &args.data_location {
        headers.push(("x-kobo-data-location", area.clone()));
    }
    if let Some(region) = &args.prefer_region {
        headers.push(("x-kobo-prefer-region", region.clone()));
    }
    let client = args.client.client()?;
    let mut response = client
        .gateway("/v1/chat/completions", &body, &headers)
        .await?;
    let job_id = response
        .headers()
        .get("x-kobo-job-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let mut pending = String::new();
    let mut out = std::io::stdout();
    let mut finished = false;
    while let Some(chunk) = response.chunk().await.context("reading the stream")? {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                finished = true;
                continue;
            }
            let value: serde_json::Value =
                serde_json::from_str(data).context("an event of the stream is not JSON")?;
            if let Some(error) = value.get("error") {
                println!();
                bail!(
                    "job {job_id}: {}",
                    error["message"].as_str().unwrap_or("the stream failed")
                );
            }
            if let Some(text) = value["choices"][0]["delta"]["content"].as_str() {
                use std::io::Write;
                print!("{text}");
                out.flush().ok();
            }
        }
    }
    println!();
    if !finished {
        bail!("job {job_id}: the stream ended before its end");
    }
    eprintln!("job {job_id}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_says_how_much_it_leaves_out_and_how_to_get_it() {
        assert_eq!(
            page_footer(50, 1234, Some(1184)),
            "50 of 1,234 (use --limit / --after 1184 for more)"
        );
        assert_eq!(page_footer(3, 3, None), "3 of 3");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }
}
