//! First rough figures for the Core issue: pickup latency and no-op jobs/s
//! through the full HTTPS API, with a real coordinator (real TLS, real SQLite
//! file, `synchronous=FULL`) and protocol-level agents (each its own client
//! and connection). `kobo-bench` (the Benchmarks issue) supersedes this.
//!
//! cargo run --release -p kobo-tests --example core_figures

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kobo_agent::coordinator::CoordinatorClient;
use kobo_coord::client::{ApiClient, Endpoint};
use kobo_coord::config::{QueueConfig, ServeConfig};
use kobo_protocol::{
    CompleteRequest, LeaseRequest, LlmOutput, Outcome, RegisterRequest, SubmitJob,
};
use tokio_util::sync::CancellationToken;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn agent_client(
    url: &str,
    ca: &[u8],
    admin: &ApiClient,
    dir: &Path,
    node: &str,
) -> CoordinatorClient {
    let token = admin
        .token_create(node, Duration::from_secs(60))
        .await
        .expect("token")
        .token;
    let node_dir = dir.join("agents").join(node);
    kobo_agent::identity::join(url, &token, node, &node_dir)
        .await
        .expect("join");
    let identity = kobo_agent::identity::IdentityFiles::in_dir(&node_dir)
        .load()
        .expect("identity");
    let client = CoordinatorClient::new(url, Some(ca), Some(&identity)).expect("client");
    client
        .register(&RegisterRequest {
            node_id: node.into(),
            instance_id: node.into(),
            region: "ap-northeast-1".into(),
            capabilities: vec!["noop".into()],
            max_workers: 4,
            gpu: false,
            backend: "sim".into(),
            models: vec![],
            agent_version: "bench".into(),
            specialization: None,
            latitude: None,
            longitude: None,
        })
        .await
        .expect("register");
    client
}

fn noop_done(node: &str, token: i64) -> CompleteRequest {
    CompleteRequest {
        node_id: node.into(),
        lease_token: token,
        outcome: Outcome::Succeeded {
            output: LlmOutput::default(),
        },
    }
}

fn noop() -> SubmitJob {
    SubmitJob {
        kind: "noop".into(),
        prompt: Some("noop".into()),
        ..SubmitJob::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let config = ServeConfig {
        data_dir: dir.path().to_path_buf(),
        queue: QueueConfig::default(),
        sans: vec![],
        advertise_url: Some(url.clone()),
        ca_import: None,
        node_cert_lifetime: kobo_coord::tls::NODE_CERT_LIFETIME,
    };
    kobo_coord::init::init(&kobo_coord::init::InitOptions {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })?;
    let server = tokio::spawn(kobo_coord::serve(listener, config, shutdown.clone()));
    let ca = std::fs::read(dir.path().join("ca.pem"))?;
    let client = ApiClient::new(&Endpoint {
        url: url.clone(),
        ca_pem: Some(ca.clone()),
        api_key: kobo_coord::init::local_admin_key(dir.path()),
    })?;
    while client.nodes().await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 1. Pickup latency: one parked agent, jobs submitted one at a time.
    let agent = agent_client(&url, &ca, &client, dir.path(), "pickup-agent").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let parked = Arc::new(tokio::sync::Notify::new());
    let agent_parked = parked.clone();
    let picker = tokio::spawn(async move {
        loop {
            agent_parked.notify_one();
            let leases = agent
                .lease(&LeaseRequest {
                    node_id: "pickup-agent".into(),
                    instance_id: "pickup-agent".into(),
                    max_jobs: 1,
                    wait_ms: 25_000,
                })
                .await
                .expect("lease")
                .leases;
            let got = Instant::now();
            for lease in leases {
                agent
                    .complete(lease.job_id, &noop_done("pickup-agent", lease.lease_token))
                    .await
                    .expect("complete");
                if tx.send(got).is_err() {
                    return;
                }
            }
        }
    });
    let mut pickups = Vec::new();
    for _ in 0..300 {
        parked.notified().await;
        // Let the lease request reach the coordinator and park.
        tokio::time::sleep(Duration::from_millis(3)).await;
        let sent = Instant::now();
        client.submit(&noop()).await?;
        let got = rx.recv().await.expect("pickup");
        pickups.push(got.duration_since(sent));
    }
    picker.abort();
    pickups.sort();
    println!(
        "pickup latency (submit sent -> lease received, 300 jobs): p50 {:?}  p99 {:?}",
        percentile(&pickups, 0.5),
        percentile(&pickups, 0.99)
    );

    // 2. Throughput: 50 agents x 4 slots, no-op jobs.
    for (mode, n_jobs) in [
        ("single submits", 4000usize),
        ("batch submits of 100", 10_000),
    ] {
        let done = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let mut agents = Vec::new();
        for idx in 0..50 {
            let node = format!("tp-{mode}-{idx}").replace(' ', "_");
            let agent = agent_client(&url, &ca, &client, dir.path(), &node).await;
            let done = done.clone();
            let stop = stop.clone();
            agents.push(tokio::spawn(async move {
                loop {
                    let req = LeaseRequest {
                        node_id: node.clone(),
                        instance_id: node.clone(),
                        max_jobs: 4,
                        wait_ms: 1000,
                    };
                    let leases = tokio::select! {
                        _ = stop.cancelled() => return,
                        l = agent.lease(&req) => l.expect("lease").leases,
                    };
                    let reports: Vec<_> = leases
                        .iter()
                        .map(|l| (l.job_id, noop_done(&node, l.lease_token)))
                        .collect();
                    let completes = reports
                        .iter()
                        .map(|(id, report)| agent.complete(*id, report));
                    for result in futures_util::future::join_all(completes).await {
                        result.expect("complete");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        let started = Instant::now();
        let submitters = 16;
        let mut tasks = Vec::new();
        for s in 0..submitters {
            let client = client.clone();
            let batch = mode.starts_with("batch");
            tasks.push(tokio::spawn(async move {
                let mine = n_jobs / submitters + usize::from(s < n_jobs % submitters);
                if batch {
                    let mut left = mine;
                    while left > 0 {
                        let n = left.min(100);
                        client.submit_batch(vec![noop(); n]).await.expect("batch");
                        left -= n;
                    }
                } else {
                    for _ in 0..mine {
                        client.submit(&noop()).await.expect("submit");
                    }
                }
            }));
        }
        for task in tasks {
            task.await?;
        }
        while done.load(Ordering::Relaxed) < n_jobs {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed();
        stop.cancel();
        for agent in agents {
            let _ = agent.await;
        }
        println!(
            "throughput, {mode}, 50 agents x 4 slots: {n_jobs} no-op jobs in {:.2}s = {:.0} jobs/s",
            elapsed.as_secs_f64(),
            n_jobs as f64 / elapsed.as_secs_f64()
        );
    }
    shutdown.cancel();
    server.await??;
    Ok(())
}
