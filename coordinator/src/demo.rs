//! `kobo-coord demo`: a coordinator and three local agents modelled on the
//! seed's node cards (Tokyo, Osaka, London) in one process, over real HTTPS
//! and a real SQLite file in a temporary data directory, running a mixed
//! batch of jobs and printing where each ran; then it serves (the
//! dashboard, the API) until SIGINT or SIGTERM, or exits with `--exit`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use kobo_agent::AgentConfig;
use kobo_agent::llm::{BackendKind, LlmConfig};
use kobo_protocol::{JobState, JobView, Requirements, SubmitJob};
use tokio_util::sync::CancellationToken;

use crate::cli::DemoArgs;
use kobo_client::{ApiClient, Endpoint};
use kobo_protocol::DataDir;
use kobo_queue::config::{QueueConfig, ServeConfig};
use kobo_queue::pki;

/// Where the demo looks for a local Ollama.
const OLLAMA_URL: &str = "http://127.0.0.1:11434";
/// How long agents get to register before the demo gives up.
const REGISTER_DEADLINE: Duration = Duration::from_secs(20);

struct NodeCard {
    node_id: &'static str,
    region: &'static str,
    capabilities: &'static [&'static str],
    gpu: bool,
    max_workers: u32,
    specialization: &'static str,
}

/// The seed's three node cards.
const NODES: [NodeCard; 3] = [
    NodeCard {
        node_id: "tokyo-01",
        region: "ap-northeast-1",
        capabilities: &["code_generation", "heavy_computation"],
        gpu: true,
        max_workers: 8,
        specialization: "code generation",
    },
    NodeCard {
        node_id: "osaka-01",
        region: "ap-northeast-3",
        capabilities: &["general_query", "documentation"],
        gpu: false,
        max_workers: 4,
        specialization: "light tasks",
    },
    NodeCard {
        node_id: "london-01",
        region: "eu-west-2",
        capabilities: &["confidential_processing", "data_analysis"],
        gpu: true,
        max_workers: 2,
        specialization: "confidential data, processed locally",
    },
];

/// (kind, prompt, confidential + residency in Europe)
const WORK: [(&str, &str, bool); 8] = [
    ("code_generation", "Write fizzbuzz in Rust.", false),
    (
        "general_query",
        "What is the capital of Japan? Answer in one word.",
        false,
    ),
    (
        "documentation",
        "Write two sentences describing what a job queue is.",
        false,
    ),
    (
        "data_analysis",
        "Describe the trend in this series in one sentence: 3, 5, 8, 13, 21.",
        false,
    ),
    (
        "heavy_computation",
        "Roughly how many primes are below one million? One line.",
        false,
    ),
    (
        "data_analysis",
        "Summarise this customer record in one line: Jane Doe, London, premium plan since 2021.",
        true,
    ),
    (
        "code_generation",
        "Write a Python one-liner that reverses a string.",
        false,
    ),
    ("general_query", "Say hello in Japanese.", false),
];

/// Asks a local Ollama for its first model; `None` if none answers.
async fn local_ollama_model() -> Option<String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()
        .ok()?;
    let tags: serde_json::Value = http
        .get(format!("{OLLAMA_URL}/api/tags"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    tags["models"][0]["name"].as_str().map(str::to_string)
}

fn demo_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "kobo-demo-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data_dir = demo_dir()?;
    let outcome = run_in(&args, data_dir.clone()).await;
    if args.keep {
        println!(
            "\ndata directory kept: {} (try: sqlite3 {}/kobo.db 'select * from v_jobs')",
            data_dir.display(),
            data_dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    outcome
}

async fn run_in(args: &DemoArgs, data_dir: PathBuf) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a local port")?;
    let addr = listener.local_addr()?;
    let url = format!("https://{addr}");
    let initialized = kobo_queue::init::init(&kobo_queue::init::InitOptions {
        data_dir: data_dir.clone(),
        ..kobo_queue::init::InitOptions::default()
    })?;
    let dir = DataDir::new(&data_dir);
    let ca_pem = std::fs::read(dir.ca_cert())?;
    let admin_key = dir.local_admin_key().context("the demo's admin key")?;
    debug_assert!(initialized.admin_key.is_some());

    let model = if args.sim {
        None
    } else {
        local_ollama_model().await
    };
    match &model {
        Some(model) => println!("LLM: Ollama at {OLLAMA_URL}, model {model}"),
        None => println!(
            "LLM: no Ollama answered on {OLLAMA_URL}; using the built-in simulated backend (sim, {} ms per call)",
            args.sim_latency_ms
        ),
    }
    println!("coordinator: {url}  data: {}\n", data_dir.display());

    // Ctrl-C or SIGTERM, during the batch or after it, stops everything
    // the same way: agents drain, the server shuts down, exit 0.
    let shutdown = CancellationToken::new();
    kobo_agent::signals::cancel_on_signal(shutdown.clone());
    let config = ServeConfig {
        data_dir: data_dir.clone(),
        queue: QueueConfig {
            heartbeat_interval_ms: 1000,
            lease_ttl_ms: 5000,
            ..QueueConfig::default()
        },
        sans: Vec::new(),
        advertise_url: Some(url.clone()),
        ca_import: None,
        node_cert_lifetime: pki::NODE_CERT_LIFETIME,
        gateway: kobo_queue::config::GatewayConfig::default(),
        limits: kobo_queue::config::ConnectionLimits::default(),
        checkpoints: kobo_queue::config::Checkpoints::Internal,
        database: None,
        role: None,
    };
    let server = tokio::spawn(kobo_server::serve(listener, config, shutdown.clone()));

    let client = ApiClient::new(&Endpoint {
        url: url.clone(),
        ca_pem: Some(ca_pem.clone()),
        api_key: Some(admin_key),
    })?;
    let mut agents = Vec::new();
    for card in &NODES {
        // Each agent enrolls as a real one would: a single-use token, a key
        // made for it, a certificate from the coordinator's CA.
        let token = client
            .token_create(card.node_id, Duration::from_secs(60))
            .await?;
        let agent_dir = dir.demo_agent(card.node_id);
        kobo_agent::identity::join(&url, &token.token, card.node_id, &agent_dir).await?;
        let identity = kobo_agent::identity::IdentityFiles::in_dir(&agent_dir).load()?;
        let llm = LlmConfig {
            kind: if model.is_some() {
                BackendKind::Ollama
            } else {
                BackendKind::Sim
            },
            endpoint: model.as_ref().map(|_| OLLAMA_URL.to_string()),
            api_key: None,
            default_model: model.clone(),
            sim_latency: Duration::from_millis(args.sim_latency_ms),
            request_timeout: None,
        };
        let config = AgentConfig {
            coordinator: url.clone(),
            ca_pem: Some(ca_pem.clone()),
            identity: Some(identity),
            node_id: card.node_id.to_string(),
            region: card.region.to_string(),
            capabilities: card.capabilities.iter().map(|c| c.to_string()).collect(),
            max_workers: card.max_workers,
            gpu: card.gpu,
            specialization: Some(card.specialization.to_string()),
            coordinates: None,
            llm,
            models: model.iter().cloned().collect(),
            drain_timeout: Duration::from_secs(30),
        };
        agents.push(tokio::spawn(kobo_agent::run(config, shutdown.clone())));
    }

    let result = tokio::select! {
        result = drive(args, &client, model) => result,
        _ = shutdown.cancelled() => {
            println!("\ninterrupted: stopping");
            Ok(())
        }
    };
    if result.is_ok() && !args.exit && !shutdown.is_cancelled() {
        println!("\nthe demo keeps running: the dashboard link above works until Ctrl-C ({url}/)");
        shutdown.cancelled().await;
    }
    shutdown.cancel();
    for agent in agents {
        agent.await.context("agent task")??;
    }
    server.await.context("server task")??;
    if !args.exit {
        println!("agents drained, coordinator stopped");
    }
    result
}

async fn drive(args: &DemoArgs, client: &ApiClient, model: Option<String>) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let nodes = client.nodes().await.unwrap_or_default();
        if nodes.len() == NODES.len() {
            println!("{}", crate::cli::nodes_table(&nodes));
            break;
        }
        anyhow::ensure!(
            started.elapsed() < REGISTER_DEADLINE,
            "agents did not register within {REGISTER_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let jobs: Vec<SubmitJob> = (0..args.jobs)
        .map(|idx| {
            let (kind, prompt, confidential) = WORK[idx % WORK.len()];
            SubmitJob {
                kind: kind.to_string(),
                model: model.clone(),
                prompt: Some(prompt.to_string()),
                requirements: Requirements {
                    confidential,
                    data_location: confidential.then(|| "europe".to_string()),
                    gpu: kind == "heavy_computation",
                    ..Requirements::default()
                },
                ..SubmitJob::default()
            }
        })
        .collect();
    let submitted = Instant::now();
    let answers = client.submit_batch(jobs).await?;
    println!(
        "\nsubmitted {} jobs; results as they finish:\n",
        answers.jobs.len()
    );

    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for answer in &answers.jobs {
        let client = client.clone();
        let done_tx = done_tx.clone();
        let id = answer.id;
        tokio::spawn(async move {
            let _ = done_tx.send(client.wait_terminal(id).await);
        });
    }
    drop(done_tx);
    let mut finished: Vec<JobView> = Vec::new();
    while let Some(job) = done_rx.recv().await {
        let job = job?;
        let elapsed = submitted.elapsed().as_secs_f64();
        let node = job.node_id.clone().unwrap_or_else(|| "-".into());
        let region = NODES
            .iter()
            .find(|n| n.node_id == node)
            .map(|n| n.region)
            .unwrap_or("");
        let text = match (&job.state, &job.output) {
            (JobState::Succeeded, Some(output)) => {
                let first = output
                    .text
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim();
                let first: String = first.chars().take(70).collect();
                format!("{} ms  {first}", output.usage.duration_ms)
            }
            _ => format!(
                "{} {}",
                job.state,
                job.last_error.clone().unwrap_or_default()
            ),
        };
        let place = format!("{node} ({region})");
        println!(
            "[{elapsed:6.2}s] job {:>3}  {:<18} → {place:<27} {text}",
            job.id, job.kind
        );
        finished.push(job);
    }
    let ok = finished
        .iter()
        .filter(|j| j.state == JobState::Succeeded)
        .count();
    println!(
        "\n{ok}/{} jobs succeeded in {:.2}s",
        finished.len(),
        submitted.elapsed().as_secs_f64()
    );
    // One more heartbeat, so the table shows the nodes' metrics.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let nodes = client.nodes().await?;
    println!("{}", crate::cli::nodes_table(&nodes));
    anyhow::ensure!(
        ok == finished.len(),
        "{} jobs did not succeed",
        finished.len() - ok
    );
    Ok(())
}
