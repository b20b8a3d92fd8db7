//! The `kobo-coord` command line: argument definitions and the client
//! commands (`submit`, `jobs`, `job`, `cancel`, `nodes`) with their human and
//! `--json` outputs.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use kobo_protocol::{
    AccessRole, AuditQuery, CatchUp, GenerationOptions, JobDetail, JobListQuery, JobState, JobView,
    NodeView, Preferences, Requirements, SubmitJob, UnixMillis,
};

use crate::client::{ApiClient, Endpoint};
use crate::config::{QueueConfig, ServeConfig};

#[derive(Debug, Parser)]
#[command(
    name = "kobo-coord",
    version,
    about = "The kobo coordinator: a durable LLM job queue with agents on many machines"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator (HTTPS API on one TLS listener).
    Serve(ServeArgs),
    /// Start a coordinator and three local agents, run a mixed batch of jobs, print where each ran.
    Demo(DemoArgs),
    /// Submit a job; prints its id (with --wait, its result).
    Submit(SubmitArgs),
    /// List jobs, newest first.
    Jobs(JobsArgs),
    /// Show one job with its attempts and events.
    Job(JobArgs),
    /// Cancel a queued or running job.
    Cancel(JobArgs),
    /// List nodes with status, load, last heartbeat and metrics.
    Nodes(NodesArgs),
    /// The cluster on one screen: nodes, load, queue, throughput, newest jobs.
    Status(crate::status::StatusArgs),
    /// Prepare a data directory: CA, secrets, database, the first admin key.
    Init(InitArgs),
    /// Manage API keys (admin).
    #[command(subcommand)]
    Apikey(ApikeyCommand),
    /// Create single-use join tokens for `kobo-agent join` (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Node administration: revoke a node's certificates (admin).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Print the audit log, or `audit verify` its hash chain (admin).
    Audit(AuditArgs),
    /// Serve MCP tools on stdio so Claude Code (or any MCP client) drives the cluster.
    Mcp(McpArgs),
    /// Drain a node: no new jobs; running ones finish (admin).
    Drain(NodeArgs),
    /// Undo a drain: the node takes jobs again (admin).
    Resume(NodeArgs),
    /// Recurring jobs (cron, UTC).
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Install, upgrade, remove or roll back agents over SSH from a YAML inventory (admin).
    Provision(crate::provision::ProvisionArgs),
    /// SSH host keys of the inventory's hosts (`hosts trust` pins them).
    #[command(subcommand)]
    Hosts(crate::provision::HostsCommand),
    /// Make the ed25519 deploy key provisioning logs in with.
    Keygen(crate::provision::KeygenArgs),
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub node: String,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add a schedule: NAME, a cron expression with seconds (UTC), and the job.
    Add {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
        /// e.g. "0 */15 * * * *" (sec min hour day month weekday), UTC.
        cron: String,
        /// The job, as the JSON body of POST /v1/jobs; `-` for standard input.
        #[arg(long)]
        job: PathBuf,
        /// Slots missed while the coordinator was down: once, all or none.
        #[arg(long, default_value = "once", value_parser = parse_catch_up)]
        catch_up: CatchUp,
    },
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    Remove {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
    },
    Pause {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
    },
    Resume {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
    },
}

fn parse_catch_up(s: &str) -> Result<CatchUp, String> {
    CatchUp::parse(s).ok_or_else(|| format!("unknown catch-up {s:?}; one of once, all, none"))
}

/// `kobo-coord mcp`: the coordinator to drive, as for the client commands.
#[derive(Debug, Args)]
pub struct McpArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Extra DNS names or IPs for the server certificate (repeatable).
    #[arg(long = "san")]
    pub sans: Vec<String>,
    #[command(flatten)]
    pub ca: CaImportArgs,
}

/// Bring your own CA instead of letting kobo create one.
#[derive(Debug, Args, Clone)]
pub struct CaImportArgs {
    /// CA certificate (PEM) to use instead of creating one.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The CA's private key (PEM).
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
}

impl CaImportArgs {
    pub fn pair(&self) -> Option<(PathBuf, PathBuf)> {
        self.ca_cert.clone().zip(self.ca_key.clone())
    }
}

#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Create a key; its secret is printed once.
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// read, submit or admin (cumulative).
        #[arg(long, value_parser = parse_role)]
        role: AccessRole,
        #[arg(long)]
        name: String,
    },
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a key by id; effective on its next request.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token bound to one node name.
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// The node name the token enrolls.
        #[arg(long)]
        node: String,
        /// How long the token lives, e.g. 15m, 2h.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Revoke every certificate of a node and release its leases.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only entries newer than this: a duration ago (`1h`) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// `verify`: check the hash chain instead of printing.
    pub verify: Option<String>,
}

fn parse_role(s: &str) -> Result<AccessRole, String> {
    AccessRole::parse(s).ok_or_else(|| format!("unknown role {s:?}; one of read, submit, admin"))
}

/// Where the data directory is; shared by `serve` and client commands.
#[derive(Debug, Args, Clone)]
pub struct DataDirArg {
    /// Data directory (database, CA, credentials).
    #[arg(long, env = "KOBO_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,
}

/// The default data directory: `$XDG_DATA_HOME/kobo` or `~/.local/share/kobo`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("kobo");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/kobo"),
        None => PathBuf::from("kobo-data"),
    }
}

#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Coordinator URL (default: the local coordinator of --data-dir).
    #[arg(long, env = "KOBO_URL")]
    pub url: Option<String>,
    /// CA certificate to trust (default: <data-dir>/ca.pem when present).
    #[arg(long, env = "KOBO_CA")]
    pub ca: Option<PathBuf>,
    /// API key (default: the local admin key in <data-dir>/admin.key).
    #[arg(long, env = "KOBO_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl ClientArgs {
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        let endpoint = Endpoint::resolve(
            &self.data_dir.data_dir,
            self.url.clone(),
            self.ca.clone(),
            self.api_key.clone(),
        )?;
        ApiClient::new(&endpoint)
    }
}

#[derive(Debug, Args, Clone)]
pub struct QueueArgs {
    /// Heartbeat interval agents must keep (ms); 3 missed = node lost.
    #[arg(long, default_value_t = QueueConfig::default().heartbeat_interval_ms)]
    pub heartbeat_ms: u64,
    /// Lease lifetime, renewed by each heartbeat (ms).
    #[arg(long, default_value_t = QueueConfig::default().lease_ttl_ms)]
    pub lease_ttl_ms: u64,
    /// Longest a lease request parks waiting for work (ms).
    #[arg(long, default_value_t = QueueConfig::default().long_poll_ms)]
    pub long_poll_ms: u64,
    /// First retry delay after a failed attempt (ms); doubles per attempt, with jitter.
    #[arg(long, default_value_t = QueueConfig::default().retry_base_ms)]
    pub retry_base_ms: u64,
    /// Longest retry delay (ms).
    #[arg(long, default_value_t = QueueConfig::default().retry_cap_ms)]
    pub retry_cap_ms: u64,
    /// Attempts of a job that names none.
    #[arg(long, default_value_t = QueueConfig::default().default_max_attempts)]
    pub max_attempts: u32,
    /// How long a job preferring a busy node or region waits for it (ms).
    #[arg(long, default_value_t = QueueConfig::default().locality_wait_ms)]
    pub locality_wait_ms: u64,
    /// A routing weight, NAME=VALUE (repeatable): load, cpu, speed, rtt,
    /// region, node, specialization, model_loaded.
    #[arg(long = "route-weight")]
    pub route_weights: Vec<String>,
}

impl QueueArgs {
    pub fn config(&self) -> anyhow::Result<QueueConfig> {
        if self.heartbeat_ms == 0 || self.lease_ttl_ms == 0 {
            bail!("--heartbeat-ms and --lease-ttl-ms must be positive");
        }
        if self.lease_ttl_ms <= self.heartbeat_ms {
            bail!(
                "--lease-ttl-ms ({}) must be longer than --heartbeat-ms ({}): heartbeats renew leases",
                self.lease_ttl_ms,
                self.heartbeat_ms
            );
        }
        if self.max_attempts == 0 {
            bail!("--max-attempts must be at least 1");
        }
        Ok(QueueConfig {
            heartbeat_interval_ms: self.heartbeat_ms,
            lease_ttl_ms: self.lease_ttl_ms,
            long_poll_ms: self.long_poll_ms,
            retry_base_ms: self.retry_base_ms,
            retry_cap_ms: self.retry_cap_ms.max(self.retry_base_ms),
            default_max_attempts: self.max_attempts,
            metrics_retention: QueueConfig::default().metrics_retention,
            locality_wait_ms: self.locality_wait_ms,
            weights: {
                let mut weights = crate::scoring::Weights::default();
                for assignment in &self.route_weights {
                    weights
                        .set(assignment)
                        .map_err(|e| anyhow::anyhow!("--route-weight {e}"))?;
                }
                weights
            },
        })
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Address to listen on.
    #[arg(long, env = "KOBO_LISTEN", default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// Extra DNS names or IPs for the server certificate (repeatable).
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// URL clients should use, written to <data-dir>/client.json.
    #[arg(long)]
    pub advertise_url: Option<String>,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub ca: CaImportArgs,
    /// Lifetime of node certificates (agents renew at 2/3 of it).
    #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
    pub node_cert_lifetime: Duration,
    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// How long node metrics are kept (raw, then downsampled per minute).
#[derive(Debug, Args, Clone)]
pub struct RetentionArgs {
    /// Keep raw node metrics (one row per heartbeat) this long.
    #[arg(long, default_value = "1day", value_parser = humantime::parse_duration)]
    pub metrics_raw_retention: Duration,
    /// Keep per-minute node metrics this long.
    #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
    pub metrics_minute_retention: Duration,
}

impl RetentionArgs {
    pub fn retention(&self) -> crate::store::MetricsRetention {
        crate::store::MetricsRetention {
            raw: self.metrics_raw_retention,
            minute: self.metrics_minute_retention,
        }
    }
}

impl ServeArgs {
    pub fn config(&self) -> anyhow::Result<ServeConfig> {
        Ok(ServeConfig {
            data_dir: self.data_dir.data_dir.clone(),
            queue: QueueConfig {
                metrics_retention: self.retention.retention(),
                ..self.queue.config()?
            },
            sans: self.sans.clone(),
            advertise_url: self.advertise_url.clone(),
            ca_import: self.ca.pair(),
            node_cert_lifetime: self.node_cert_lifetime,
        })
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Jobs in the mixed batch.
    #[arg(long, default_value_t = 12)]
    pub jobs: usize,
    /// Latency of the simulated LLM when no Ollama answers (ms).
    #[arg(long, default_value_t = 400)]
    pub sim_latency_ms: u64,
    /// Use the simulated LLM even if Ollama answers on 127.0.0.1:11434.
    #[arg(long)]
    pub sim: bool,
    /// Keep the demo's data directory (printed at the end) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

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
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Wait for the job to finish and print its result.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, value_parser = parse_state)]
    pub state: Option<JobState>,
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long)]
    pub node: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The job id.
    pub id: i64,
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::parse(s).ok_or_else(|| {
        let all: Vec<_> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown state {s:?}; one of {}", all.join(", "))
    })
}

fn read_arg_or_stdin(value: &str) -> anyhow::Result<String> {
    if value == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        Ok(text)
    } else {
        Ok(value.to_string())
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
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
                    .map(|d| crate::store::unix_now_ms() + d as i64),
                idempotency_key: args.idempotency_key.clone(),
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

/// `2026-11-24 09:15:02` in UTC, or `-`.
pub fn format_time(ms: Option<UnixMillis>) -> String {
    let Some(ms) = ms.and_then(|ms| u64::try_from(ms).ok()) else {
        return "-".into();
    };
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    // `2026-11-24T09:15:02Z` → `2026-11-24 09:15:02`
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

fn ago(ms: UnixMillis) -> String {
    let secs = (crate::store::unix_now_ms() - ms).max(0) as f64 / 1000.0;
    format!("{secs:.1}s ago")
}

fn head(text: &str, n: usize) -> String {
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.chars().count() > n {
        format!("{}…", line.chars().take(n).collect::<String>())
    } else {
        line.to_string()
    }
}

pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    table
}

pub async fn jobs(args: JobsArgs) -> anyhow::Result<()> {
    let query = JobListQuery {
        state: args.state,
        kind: args.kind.clone(),
        node_id: args.node.clone(),
        limit: Some(args.limit),
        before_id: None,
    };
    let list = args.client.client()?.jobs(&query).await?;
    if args.client.json {
        return print_json(&list);
    }
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
    Ok(())
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
fn print_route_reason(reason: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    println!(
        "  routed to {} ({}; {}{})",
        text(&reason["chosen"]),
        text(&reason["how"]),
        text(&reason["note"]),
        reason["locality"]
            .as_str()
            .map(|l| format!("; locality: {l}"))
            .unwrap_or_default()
    );
    if let Some(ranked) = reason["ranked"].as_array() {
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
        for r in ranked {
            let term = |name: &str| format!("{:.2}", r["terms"][name].as_f64().unwrap_or(0.0));
            t.add_row(vec![
                text(&r["node"]),
                term("total"),
                term("load"),
                term("cpu"),
                term("speed"),
                term("rtt"),
                term("region"),
                term("node"),
                term("specialization"),
                term("model_loaded"),
            ]);
        }
        println!("{t}");
    }
    if let Some(excluded) = reason["excluded"].as_object() {
        for (node, why) in excluded {
            println!("  excluded {node}: {}", why.as_str().unwrap_or(""));
        }
    }
}

pub async fn drain(args: NodeArgs, drain: bool) -> anyhow::Result<()> {
    let client = args.client.client()?;
    let answer = if drain {
        client.drain(&args.node).await?
    } else {
        client.resume(&args.node).await?
    };
    if args.client.json {
        return print_json(&answer);
    }
    println!(
        "node {} is {}",
        args.node,
        answer["status"].as_str().unwrap_or("?")
    );
    Ok(())
}

pub async fn schedule(command: ScheduleCommand) -> anyhow::Result<()> {
    match command {
        ScheduleCommand::Add {
            client,
            name,
            cron,
            job,
            catch_up,
        } => {
            let text = if job.as_os_str() == "-" {
                read_arg_or_stdin("-")?
            } else {
                std::fs::read_to_string(&job)
                    .with_context(|| format!("reading {}", job.display()))?
            };
            let job: SubmitJob = serde_json::from_str(&text)
                .with_context(|| format!("parsing job {}", job.display()))?;
            let body = kobo_protocol::ScheduleCreate {
                name,
                cron,
                job,
                catch_up,
            };
            let created = client.client()?.schedule_create(&body).await?;
            if client.json {
                return print_json(&created);
            }
            println!(
                "schedule {} added: {} (UTC), next at {} UTC",
                created.name,
                created.cron,
                format_time(Some(created.next_fire_at))
            );
            Ok(())
        }
        ScheduleCommand::List { client } => {
            let list = client.client()?.schedules().await?;
            if client.json {
                return print_json(&list);
            }
            let mut t = table(&[
                "name",
                "cron (UTC)",
                "kind",
                "catch-up",
                "paused",
                "next",
                "last fired",
                "last job",
            ]);
            for s in &list {
                t.add_row(vec![
                    s.name.clone(),
                    s.cron.clone(),
                    s.kind.clone(),
                    s.catch_up.as_str().to_string(),
                    s.paused.to_string(),
                    format_time(Some(s.next_fire_at)),
                    format_time(s.last_fired_at),
                    s.last_job_id
                        .map(|id| id.to_string())
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        ScheduleCommand::Remove { client, name } => {
            client.client()?.schedule_remove(&name).await?;
            println!("schedule {name} removed");
            Ok(())
        }
        ScheduleCommand::Pause { client, name } => {
            client.client()?.schedule_pause(&name, true).await?;
            println!("schedule {name} paused");
            Ok(())
        }
        ScheduleCommand::Resume { client, name } => {
            client.client()?.schedule_pause(&name, false).await?;
            println!("schedule {name} resumed");
            Ok(())
        }
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

pub async fn nodes(args: NodesArgs) -> anyhow::Result<()> {
    let nodes = args.client.client()?.nodes().await?;
    if args.client.json {
        return print_json(&nodes);
    }
    println!("{}", nodes_table(&nodes));
    Ok(())
}

pub fn nodes_table(nodes: &[NodeView]) -> Table {
    let mut t = table(&[
        "node",
        "region",
        "status",
        "load",
        "capabilities",
        "backend",
        "heartbeat",
        "rtt",
        "done/failed",
        "success",
        "mean llm",
        "cpu",
        "mem",
    ]);
    for n in nodes {
        let (cpu, mem) = match &n.metrics {
            Some(m) => (
                format!("{:.0}%", m.cpu_percent),
                format!(
                    "{:.0}%",
                    100.0 * m.mem_used_bytes as f64 / m.mem_total_bytes.max(1) as f64
                ),
            ),
            None => ("-".into(), "-".into()),
        };
        t.add_row(vec![
            n.node_id.clone(),
            n.region.clone(),
            n.status.as_str().to_string(),
            format!("{}/{}", n.running, n.max_workers),
            n.capabilities.join(","),
            format!("{}{}", n.backend, if n.gpu { " gpu" } else { "" }),
            ago(n.last_heartbeat_at),
            n.rtt_ms
                .map(|r| format!("{r} ms"))
                .unwrap_or_else(|| "-".into()),
            format!("{}/{}", n.jobs_succeeded, n.jobs_failed),
            match n.jobs_succeeded + n.jobs_failed {
                0 => "-".into(),
                all => format!("{:.0}%", 100.0 * n.jobs_succeeded as f64 / all as f64),
            },
            n.mean_llm_ms
                .map(|m| format!("{m:.0} ms"))
                .unwrap_or_else(|| "-".into()),
            cpu,
            mem,
        ]);
    }
    t
}

pub fn init(args: InitArgs) -> anyhow::Result<()> {
    let done = crate::init::init(&crate::init::InitOptions {
        data_dir: args.data_dir.data_dir.clone(),
        sans: args.sans.clone(),
        ca_import: args.ca.pair(),
    })?;
    let dir = args.data_dir.data_dir.display();
    println!("data directory: {dir}");
    println!("CA certificate: {dir}/ca.pem (sha256 {})", done.ca_sha256);
    match done.admin_key {
        Some(key) => {
            println!("admin API key (shown once; also in {dir}/admin.key, mode 0600):");
            println!("{key}");
        }
        None => println!("already initialised; the local admin key is in {dir}/admin.key"),
    }
    Ok(())
}

pub async fn apikey(command: ApikeyCommand) -> anyhow::Result<()> {
    match command {
        ApikeyCommand::Create { client, role, name } => {
            let created = client.client()?.apikey_create(&name, role).await?;
            if client.json {
                return print_json(&created);
            }
            println!("{}", created.key);
            eprintln!(
                "API key {} ({}, role {}): the secret above is shown only once",
                created.id, created.name, created.role
            );
            Ok(())
        }
        ApikeyCommand::List { client } => {
            let keys = client.client()?.apikey_list().await?;
            if client.json {
                return print_json(&keys);
            }
            let mut t = table(&["id", "name", "role", "created", "by", "revoked"]);
            for k in &keys {
                t.add_row(vec![
                    k.id.clone(),
                    k.name.clone(),
                    k.role.to_string(),
                    format_time(Some(k.created_at)),
                    k.created_by.clone(),
                    format_time(k.revoked_at),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        ApikeyCommand::Revoke { client, id } => {
            client.client()?.apikey_revoke(&id).await?;
            if client.json {
                return print_json(&serde_json::json!({ "revoked": id }));
            }
            println!("API key {id} revoked");
            Ok(())
        }
    }
}

pub async fn token(command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create { client, node, ttl } = command;
    let created = client.client()?.token_create(&node, ttl).await?;
    if client.json {
        return print_json(&created);
    }
    println!("{}", created.token);
    eprintln!(
        "single-use join token for node {node}, valid until {} UTC:\n  kobo-agent join <coordinator url> --token <token> --node-id {node} ...",
        format_time(Some(created.expires_at))
    );
    Ok(())
}

pub async fn node(command: NodeCommand) -> anyhow::Result<()> {
    let NodeCommand::Revoke { client, id } = command;
    let answer = client.client()?.node_revoke(&id).await?;
    if client.json {
        return print_json(&answer);
    }
    println!(
        "node {} revoked: {} certificates, {} leases released",
        answer.node_id, answer.certificates_revoked, answer.leases_released
    );
    Ok(())
}

/// `1h` (that long ago) or an RFC 3339 time, as Unix milliseconds.
fn parse_since(text: &str) -> anyhow::Result<UnixMillis> {
    let now = std::time::SystemTime::now();
    let at = match humantime::parse_duration(text) {
        Ok(ago) => now.checked_sub(ago).unwrap_or(std::time::UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(text).with_context(|| {
            format!("--since {text:?}: neither a duration (1h) nor an RFC 3339 time")
        })?,
    };
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let client = args.client.client()?;
    match args.verify.as_deref() {
        Some("verify") => {
            let report = client.audit_verify().await?;
            if args.client.json {
                print_json(&report)?;
            } else if report.ok {
                println!(
                    "audit log intact: {} rows, hash chain verified",
                    report.rows
                );
            }
            if !report.ok {
                bail!(
                    "audit log tampered: row {} does not match its hash chain ({} rows checked)",
                    report.first_bad_id.unwrap_or_default(),
                    report.rows
                );
            }
            return Ok(());
        }
        Some(other) => bail!("unknown audit subcommand {other:?}; did you mean `audit verify`?"),
        None => {}
    }
    let query = AuditQuery {
        since: args.since.as_deref().map(parse_since).transpose()?,
        limit: Some(args.limit),
    };
    let list = client.audit(&query).await?;
    if args.client.json {
        return print_json(&list);
    }
    let mut t = table(&[
        "id", "at", "actor", "action", "target", "outcome", "source", "detail",
    ]);
    for e in &list.entries {
        t.add_row(vec![
            e.id.to_string(),
            format_time(Some(e.at)),
            e.actor.clone(),
            e.action.clone(),
            e.target.clone().unwrap_or_default(),
            e.outcome.clone(),
            e.source.clone().unwrap_or_default(),
            e.detail.as_deref().map(|d| head(d, 60)).unwrap_or_default(),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// How long `submit --wait` and the demo wait per call before asking again.
pub const WAIT_SLICE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::format_time;

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_time(Some(0)), "1970-01-01 00:00:00");
        assert_eq!(format_time(Some(1_795_000_000_000)), "2026-11-18 11:06:40");
        assert_eq!(format_time(None), "-");
    }
}
