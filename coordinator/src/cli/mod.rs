//! The `kobo-coord` command line: the clap definitions, the arguments every
//! client command shares, and the output helpers; each command group in its
//! own file.
//!
//! # Layout
//! - `serve.rs`: `serve`/`init`/`demo` arguments and `init`.
//! - `jobs.rs`: `submit`, `jobs`, `job`, `cancel`.
//! - `nodes.rs`: `nodes`, `drain`, `resume`, `node`.
//! - `schedules.rs`: `schedule …`.
//! - `admin.rs`: `apikey`, `token`, `audit`.
//! - `enroll.rs`: `enroll-key`.
//! - `usage.rs`: `usage`.
//! - `backup.rs`: `backup`, `restore`.

mod admin;
mod backup;
mod enroll;
mod jobs;
mod nodes;
mod schedules;
mod serve;
mod usage;

pub use admin::*;
pub use backup::*;
pub use enroll::*;
pub use jobs::*;
pub use nodes::*;
pub use schedules::*;
pub use serve::*;
pub use usage::*;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use kobo_protocol::{
    AccessRole, AuditQuery, CatchUp, GenerationOptions, JobDetail, JobId, JobListQuery, JobState,
    JobView, NodeView, Preferences, Requirements, SubmitJob, UnixMillis,
};

use kobo_client::{ApiClient, Endpoint};
use kobo_queue::config::{QueueConfig, ServeConfig};

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
    /// Copy the data directory (database, keys, certificates) into a new
    /// directory while the coordinator serves.
    Backup(BackupArgs),
    /// Put a backup back into a data directory no coordinator is serving from.
    Restore(RestoreArgs),
    /// Manage API keys (admin).
    #[command(subcommand)]
    Apikey(ApikeyCommand),
    /// Create single-use join tokens for `kobo-agent join` (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Reusable enrollment keys for fleets that name their own nodes, such as
    /// a Kubernetes Deployment (admin).
    #[command(subcommand)]
    EnrollKey(EnrollKeyCommand),
    /// Node administration: revoke a node's certificates (admin).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Tokens, requests and LLM time per key, model, node or hour (an admin
    /// sees every key, anyone else its own).
    Usage(UsageArgs),
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
    /// Start and stop the inventory's pools of standby hosts as their backlog needs (admin).
    Autoscale(crate::autoscale::AutoscaleArgs),
    /// Print a shell completion script, e.g. `kobo-coord completions bash`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write man pages: kobo-coord.1 and one per subcommand (kobo-coord-jobs.1, …).
    Man {
        /// Directory to write the pages into (created when missing).
        #[arg(long)]
        out: PathBuf,
    },
}

/// The whole command tree, for completions, man pages and tests.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// `kobo-coord mcp`: the coordinator to drive, as for the client commands.
#[derive(Debug, Args)]
pub struct McpArgs {
    #[command(flatten)]
    pub client: ClientArgs,
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
    kobo_protocol::DataDir::default_root()
}

#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Coordinator URL (default: the local coordinator of --data-dir); with
    /// several coordinators, their URLs comma-separated: calls go to the
    /// first that answers and follow a standby to the leader.
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
        Ok(ApiClient::new(&endpoint)?)
    }
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
    let secs = (kobo_queue::store::unix_now_ms() - ms).max(0) as f64 / 1000.0;
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
