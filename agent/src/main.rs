//! `kobo-agent`: parses the command line and runs the agent until SIGTERM or
//! Ctrl-C, then drains.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kobo_agent::AgentConfig;
use kobo_agent::llm::{BackendKind, LlmConfig};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "kobo-agent",
    version,
    about = "The kobo worker agent: leases jobs from kobo-coord and runs them on this machine's LLM"
)]
struct Cli {
    /// Coordinator URL, e.g. https://coord.example:7443.
    #[arg(long, env = "KOBO_COORDINATOR")]
    coordinator: String,
    /// CA certificate of the coordinator (its <data-dir>/ca.pem).
    #[arg(long, env = "KOBO_CA")]
    ca: Option<PathBuf>,
    /// This node's unique id.
    #[arg(long, env = "KOBO_NODE_ID")]
    node_id: String,
    /// Region, e.g. ap-northeast-1 (decides data residency).
    #[arg(long, env = "KOBO_REGION")]
    region: String,
    /// Kinds of work this node takes (comma-separated); a job runs only on a
    /// node listing its kind.
    #[arg(
        long,
        env = "KOBO_CAPABILITIES",
        value_delimiter = ',',
        required = true
    )]
    capabilities: Vec<String>,
    /// Jobs run at once.
    #[arg(long, env = "KOBO_MAX_WORKERS", default_value_t = 4)]
    max_workers: u32,
    /// The node has a GPU.
    #[arg(long, env = "KOBO_GPU")]
    gpu: bool,
    /// Free-text specialization, e.g. "code generation".
    #[arg(long)]
    specialization: Option<String>,
    /// LLM backend: ollama, openai or sim.
    #[arg(long, env = "KOBO_LLM", default_value = "ollama")]
    llm: BackendKind,
    /// Base URL of the LLM server (default: Ollama's http://127.0.0.1:11434).
    #[arg(long, env = "KOBO_LLM_ENDPOINT")]
    llm_endpoint: Option<String>,
    /// Model used when a job names none.
    #[arg(long, env = "KOBO_LLM_MODEL")]
    llm_model: Option<String>,
    /// Name of the environment variable holding the OpenAI-compatible API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    llm_api_key_env: String,
    /// Models to announce instead of asking the LLM server (comma-separated).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Latency of the simulated backend (ms).
    #[arg(long, default_value_t = 200)]
    sim_latency_ms: u64,
    /// On SIGTERM, how long running jobs get to finish (seconds).
    #[arg(long, default_value_t = 60)]
    drain_timeout_secs: u64,
}

fn config(cli: Cli) -> anyhow::Result<AgentConfig> {
    let ca_pem = match &cli.ca {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading CA certificate {}", path.display()))?,
        ),
        None => None,
    };
    anyhow::ensure!(cli.max_workers >= 1, "--max-workers must be at least 1");
    let endpoint = match (cli.llm, cli.llm_endpoint) {
        (_, Some(endpoint)) => Some(endpoint),
        (BackendKind::Ollama, None) => Some("http://127.0.0.1:11434".to_string()),
        (BackendKind::OpenAi, None) => anyhow::bail!("--llm openai needs --llm-endpoint"),
        (BackendKind::Sim, None) => None,
    };
    Ok(AgentConfig {
        coordinator: cli.coordinator,
        ca_pem,
        node_id: cli.node_id,
        region: cli.region,
        capabilities: cli.capabilities,
        max_workers: cli.max_workers,
        gpu: cli.gpu,
        specialization: cli.specialization,
        llm: LlmConfig {
            kind: cli.llm,
            endpoint,
            api_key: std::env::var(&cli.llm_api_key_env)
                .ok()
                .filter(|k| !k.is_empty()),
            default_model: cli.llm_model,
            sim_latency: Duration::from_millis(cli.sim_latency_ms),
            request_timeout: None,
        },
        models: cli.models,
        drain_timeout: Duration::from_secs(cli.drain_timeout_secs),
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = config(cli).and_then(|config| {
        let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
        runtime.block_on(async {
            let shutdown = CancellationToken::new();
            kobo_agent::signals::cancel_on_signal(shutdown.clone());
            kobo_agent::run(config, shutdown).await
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kobo-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}
