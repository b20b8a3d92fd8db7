//! `kobo-agent`: parses the command line and runs the agent until SIGTERM or
//! Ctrl-C, then drains. `kobo-agent join` enrolls first (as does `kobo-agent
//! enroll`, or a plain start with `KOBO_ENROLL_KEY` and no certificate, as
//! in a Kubernetes pod); `kobo-agent keygen`
//! makes the node key and prints a certificate signing request; `kobo-agent
//! supervise` runs it with the settings of an environment file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use kobo_agent::AgentConfig;
use kobo_agent::identity::{self, IdentityFiles};
use kobo_agent::llm::{BackendKind, LlmConfig};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "kobo-agent",
    version,
    about = "The kobo worker agent: leases jobs from kobo-coord and runs them on this machine's LLM",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll with a single-use join token, then run.
    Join {
        /// Coordinator URL, e.g. https://coord.example:7443.
        url: String,
        /// The token from `kobo-coord token create --node <node-id>`.
        #[arg(long, env = "KOBO_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        #[command(flatten)]
        run: Box<RunArgs>,
    },
    /// Enroll with a reusable enrollment key as <prefix><suffix>, then run.
    Enroll {
        /// Coordinator URL, e.g. https://coord.example:7443.
        url: String,
        #[command(flatten)]
        run: Box<RunArgs>,
    },
    /// Make the node key (if missing) and print a certificate signing request.
    Keygen {
        /// The node's id, as the CSR's common name (e.g. tokyo-01).
        #[arg(long, env = "KOBO_NODE_ID")]
        node_id: String,
        /// Where the node key lives.
        #[arg(long, env = "KOBO_AGENT_DIR", default_value_os_t = default_state_dir())]
        state_dir: PathBuf,
    },
    /// Run the agent with the settings of an environment file (KEY=value
    /// lines, taken literally), restarting it when it exits; how
    /// provisioning runs agents.
    Supervise {
        /// The settings: KOBO_COORDINATOR=…, KOBO_NODE_ID=…, one a line.
        #[arg(long)]
        env_file: PathBuf,
        /// Where the supervisor writes its pid (removed when it stops).
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Where a detached supervisor and its agent write their logs.
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// Start in the background, in a session of its own; print the pid.
        #[arg(long, requires = "pid_file")]
        detach: bool,
        /// Exit with the agent's status when it exits (under systemd, which restarts).
        #[arg(long)]
        no_restart: bool,
        /// Internal: leave the caller's session first (set by --detach).
        #[arg(long, hide = true)]
        session: bool,
    },
}

/// `$KOBO_AGENT_DIR`, else `~/.local/share/kobo-agent`.
fn default_state_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/kobo-agent"),
        None => PathBuf::from("kobo-agent"),
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Coordinator URL, e.g. https://coord.example:7443.
    #[arg(long, env = "KOBO_COORDINATOR")]
    coordinator: Option<String>,
    /// Where the node key, certificate and CA live (node.key, node.pem, ca.pem).
    #[arg(long, env = "KOBO_AGENT_DIR", default_value_os_t = default_state_dir())]
    state_dir: PathBuf,
    /// CA certificate of the coordinator (default: <state-dir>/ca.pem).
    #[arg(long, env = "KOBO_CA")]
    ca: Option<PathBuf>,
    /// Node certificate (default: <state-dir>/node.pem).
    #[arg(long, env = "KOBO_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// Node private key (default: <state-dir>/node.key).
    #[arg(long, env = "KOBO_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// This node's unique id (default: the name its certificate carries).
    #[arg(long, env = "KOBO_NODE_ID")]
    node_id: Option<String>,
    /// An enrollment key (`kobo-coord enroll-key create`): with no node
    /// certificate yet, the agent enrolls with it at start.
    #[arg(long, env = "KOBO_ENROLL_KEY", hide_env_values = true)]
    enroll_key: Option<String>,
    /// With --enroll-key: the node is named <the key's prefix><suffix>, e.g.
    /// the pod name from the downward API.
    #[arg(long, env = "KOBO_NODE_NAME_SUFFIX", conflicts_with = "node_id")]
    name_suffix: Option<String>,
    /// Region, e.g. ap-northeast-1 (decides data residency).
    #[arg(long, env = "KOBO_REGION")]
    region: Option<String>,
    /// Kinds of work this node takes (comma-separated); a job runs only on a
    /// node listing its kind.
    #[arg(long, env = "KOBO_CAPABILITIES", value_delimiter = ',')]
    capabilities: Vec<String>,
    /// Jobs run at once.
    #[arg(long, env = "KOBO_MAX_WORKERS", default_value_t = 4)]
    max_workers: u32,
    /// The node has a GPU.
    #[arg(long, env = "KOBO_GPU")]
    gpu: bool,
    /// Free-text specialization, e.g. "code generation".
    #[arg(long, env = "KOBO_SPECIALIZATION")]
    specialization: Option<String>,
    /// Where the node is (for the map and nearness), e.g. 35.68.
    #[arg(
        long,
        env = "KOBO_LATITUDE",
        requires = "longitude",
        allow_hyphen_values = true
    )]
    latitude: Option<f64>,
    /// Where the node is, with --latitude, e.g. 139.69.
    #[arg(
        long,
        env = "KOBO_LONGITUDE",
        requires = "latitude",
        allow_hyphen_values = true
    )]
    longitude: Option<f64>,
    /// LLM backend: ollama, openai or sim.
    #[arg(long, env = "KOBO_LLM", default_value = "ollama")]
    llm: BackendKind,
    /// Base URL of the LLM server (default: Ollama's http://127.0.0.1:11434).
    #[arg(long, env = "KOBO_LLM_ENDPOINT")]
    llm_endpoint: Option<String>,
    /// Model used when a job names none (default: the server's first).
    #[arg(long, env = "KOBO_LLM_MODEL")]
    llm_model: Option<String>,
    /// Name of the environment variable holding the OpenAI-compatible API key.
    #[arg(long, env = "KOBO_LLM_API_KEY_ENV", default_value = "OPENAI_API_KEY")]
    llm_api_key_env: String,
    /// Models to announce instead of asking the LLM server (comma-separated).
    #[arg(long, env = "KOBO_MODELS", value_delimiter = ',')]
    models: Vec<String>,
    /// Latency of the simulated backend (ms).
    #[arg(long, default_value_t = 200)]
    sim_latency_ms: u64,
    /// On SIGTERM, how long running jobs get to finish (seconds); then they
    /// are given back at once. Keep it below a pod's grace period.
    #[arg(long, env = "KOBO_DRAIN_TIMEOUT_SECS", default_value_t = 60)]
    drain_timeout_secs: u64,
}

fn read_optional(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

fn config(
    run: RunArgs,
    coordinator: Option<String>,
    node_id: Option<String>,
) -> anyhow::Result<AgentConfig> {
    let Some(coordinator) = coordinator.or(run.coordinator) else {
        bail!("--coordinator (or KOBO_COORDINATOR) is required");
    };
    let Some(node_id) = node_id.or(run.node_id) else {
        bail!("--node-id (or KOBO_NODE_ID) is required");
    };
    let Some(region) = run.region else {
        bail!("--region (or KOBO_REGION) is required");
    };
    if run.capabilities.is_empty() {
        bail!(
            "--capabilities (or KOBO_CAPABILITIES) is required: the kinds of work this node takes"
        );
    }
    anyhow::ensure!(run.max_workers >= 1, "--max-workers must be at least 1");
    let ca_pem = match &run.ca {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading CA certificate {}", path.display()))?,
        ),
        None => read_optional(&run.state_dir.join("ca.pem"))?,
    };
    let files = match (run.cert, run.key) {
        (Some(cert), Some(key)) => IdentityFiles { cert, key },
        _ => IdentityFiles::in_dir(&run.state_dir),
    };
    let identity = if files.cert.exists() && files.key.exists() {
        Some(files.load()?)
    } else {
        tracing::warn!(
            cert = %files.cert.display(),
            "no node certificate: the coordinator will refuse this agent; enroll with `kobo-agent join` or an enrollment key (KOBO_ENROLL_KEY)"
        );
        None
    };
    let endpoint = match (run.llm, run.llm_endpoint) {
        (_, Some(endpoint)) => Some(endpoint),
        (BackendKind::Ollama, None) => Some("http://127.0.0.1:11434".to_string()),
        (BackendKind::OpenAi, None) => bail!("--llm openai needs --llm-endpoint"),
        (BackendKind::Sim, None) => None,
    };
    Ok(AgentConfig {
        coordinator,
        ca_pem,
        identity,
        node_id,
        region,
        capabilities: run.capabilities,
        max_workers: run.max_workers,
        gpu: run.gpu,
        specialization: run.specialization,
        coordinates: run.latitude.zip(run.longitude),
        llm: LlmConfig {
            kind: run.llm,
            endpoint,
            api_key: std::env::var(&run.llm_api_key_env)
                .ok()
                .filter(|k| !k.is_empty()),
            default_model: run.llm_model,
            sim_latency: Duration::from_millis(run.sim_latency_ms),
            request_timeout: None,
        },
        models: run.models,
        drain_timeout: Duration::from_secs(run.drain_timeout_secs),
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = match cli.command {
        Some(Command::Keygen { node_id, state_dir }) => {
            let key = identity::load_or_create_key(&state_dir)?;
            print!("{}", identity::csr(&node_id, &key)?);
            eprintln!(
                "node key: {} (never leaves this machine)",
                state_dir.join("node.key").display()
            );
            return Ok(());
        }
        Some(Command::Supervise { .. }) => bail!("supervise runs without this runtime"),
        Some(Command::Join { url, token, run }) => {
            let node_id = run
                .node_id
                .clone()
                .context("--node-id is required: the name the token was created for")?;
            let enrolled = identity::join(&url, &token, &node_id, &run.state_dir).await?;
            tracing::info!(node_id = %enrolled, state_dir = %run.state_dir.display(), "enrolled");
            config(*run, Some(url), Some(enrolled))?
        }
        Some(Command::Enroll { url, run }) => {
            let enrolled = enroll_if_needed(&run, Some(&url))
                .await?
                .context("--enroll-key (or KOBO_ENROLL_KEY) is required")?;
            config(*run, Some(url), Some(enrolled))?
        }
        None => {
            let coordinator = cli.run.coordinator.clone();
            let enrolled = enroll_if_needed(&cli.run, coordinator.as_deref()).await?;
            config(cli.run, None, enrolled)?
        }
    };
    let shutdown = CancellationToken::new();
    kobo_agent::signals::cancel_on_signal(shutdown.clone());
    kobo_agent::run(config, shutdown).await
}

/// Enrolls with the enrollment key when there is one and no node
/// certificate yet; returns the node id, from the enrollment or else from
/// the certificate already there (so a restarted pod keeps its name).
async fn enroll_if_needed(run: &RunArgs, url: Option<&str>) -> anyhow::Result<Option<String>> {
    let files = match (&run.cert, &run.key) {
        (Some(cert), Some(key)) => IdentityFiles {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => IdentityFiles::in_dir(&run.state_dir),
    };
    if files.cert.exists() {
        if run.node_id.is_some() {
            return Ok(None);
        }
        let pem = std::fs::read(&files.cert)
            .with_context(|| format!("reading {}", files.cert.display()))?;
        return identity::cert_node_id(&pem).map(Some);
    }
    let Some(key) = &run.enroll_key else {
        return Ok(None);
    };
    let url = url.context("--coordinator (or KOBO_COORDINATOR) is required to enroll")?;
    let name = match (&run.name_suffix, &run.node_id) {
        (Some(suffix), _) => identity::EnrollName::Suffix(suffix.clone()),
        (None, Some(node_id)) => identity::EnrollName::NodeId(node_id.clone()),
        (None, None) => bail!(
            "--name-suffix (or KOBO_NODE_NAME_SUFFIX) or --node-id is required to enroll with a key"
        ),
    };
    let node_id = identity::enroll(url, key, &name, &run.state_dir).await?;
    tracing::info!(%node_id, state_dir = %run.state_dir.display(), "enrolled with an enrollment key");
    Ok(Some(node_id))
}

/// `kobo-agent supervise`: its exit code is the agent's (with --no-restart).
fn supervise(command: Command) -> anyhow::Result<ExitCode> {
    let Command::Supervise {
        env_file,
        pid_file,
        log_file,
        detach,
        no_restart,
        session,
    } = command
    else {
        bail!("not a supervise command");
    };
    if session {
        kobo_agent::supervise::new_session();
    }
    let config = kobo_agent::supervise::SuperviseConfig {
        env_file,
        pid_file,
        log_file,
        no_restart,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    if detach {
        let pid = runtime.block_on(kobo_agent::supervise::detach(&config))?;
        println!("{pid}");
        return Ok(ExitCode::SUCCESS);
    }
    let code = runtime.block_on(kobo_agent::supervise::run(config))?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Supervised agents log to a file: no colour codes there.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut cli = Cli::parse();
    if matches!(cli.command, Some(Command::Supervise { .. }))
        && let Some(command) = cli.command.take()
    {
        return supervise(command).unwrap_or_else(|err| {
            eprintln!("kobo-agent: {err:#}");
            ExitCode::FAILURE
        });
    }
    let result = tokio::runtime::Runtime::new()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kobo-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}
