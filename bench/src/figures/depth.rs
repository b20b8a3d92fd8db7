//! Figure 5, queue depth: the latency of a lease request (`POST
//! /v1/agent/lease`, not parking) with 100 to 1M jobs of the agent's kind
//! queued. The queue is filled straight into the stopped coordinator's
//! database (`store::insert_job`, big transactions), the coordinator
//! restarted, and each leased job is replaced by a submit, so the depth
//! holds while measuring.

use std::time::{Duration, Instant};

use anyhow::ensure;

use super::{Env, noop, prefill};
use crate::agents::{self, AgentSpec};
use crate::coordinator::{Coordinator, Timings};
use crate::report::{Bound, FigureResult, Metric};
use crate::stats;

/// Queue depths measured, in increasing order.
const DEPTHS: &[usize] = &[100, 10_000, 100_000, 1_000_000];
const DEPTHS_QUICK: &[usize] = &[100, 10_000];
/// Leases timed per run at each depth.
const SAMPLES: usize = 300;
const SAMPLES_QUICK: usize = 30;
/// Leases before timing (after a restart the caches are cold).
const WARMUP: usize = 30;
/// The most a lease at the deepest queue may cost, relative to the shallowest.
const MAX_RATIO: f64 = 1.5;
const KIND: &str = "depth";

fn depth_name(depth: usize) -> String {
    match depth {
        d if d >= 1_000_000 && d % 1_000_000 == 0 => format!("{}M", d / 1_000_000),
        d if d >= 1000 && d % 1000 == 0 => format!("{}k", d / 1000),
        d => d.to_string(),
    }
}

pub(crate) async fn run(env: &Env) -> anyhow::Result<FigureResult> {
    let depths = env.pick(DEPTHS, DEPTHS_QUICK);
    let samples = env.pick(SAMPLES, SAMPLES_QUICK);
    let dir = env.dir("depth");
    let mut coordinator = Coordinator::start(&dir, Timings::default()).await?;
    let nodes = agents::enroll(&coordinator, "depth", 1, &env.dir("depth-agents")).await?;
    let spec = AgentSpec {
        kind: KIND.into(),
        max_workers: 1,
        max_jobs_per_lease: 1,
        llm_latency: Duration::ZERO,
        long_poll_ms: 0,
        stagger: Duration::ZERO,
    };
    // p50 and p99 per run at each depth.
    let mut per_depth: Vec<Vec<stats::Latency>> = Vec::new();
    let mut queued = 0;
    for &depth in depths {
        coordinator.stop().await?;
        prefill(&dir, KIND, depth - queued).await?;
        queued = depth;
        coordinator.restart().await?;
        let client = coordinator.admin()?;
        let agent = agents::connect(&coordinator, &nodes, &spec)
            .await?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no agent"))?;
        let mut runs = Vec::new();
        for rep in 0..env.repeats {
            let warmup = if rep == 0 { WARMUP } else { 0 };
            let mut timed = Vec::with_capacity(samples);
            for idx in 0..warmup + samples {
                let sent = Instant::now();
                let leases = agent.lease_now(1).await?;
                let took = sent.elapsed();
                ensure!(
                    leases.len() == 1,
                    "a lease at depth {depth} got {} jobs",
                    leases.len()
                );
                agent.complete_noop(&leases[0]).await?;
                client.submit(&noop(KIND)).await?;
                if idx >= warmup {
                    timed.push(took);
                }
            }
            runs.push(stats::latency(&timed));
        }
        per_depth.push(runs);
    }
    coordinator.stop().await?;
    let mut runs = Vec::new();
    for rep in 0..env.repeats {
        let mut run = Vec::new();
        for (idx, &depth) in depths.iter().enumerate() {
            let name = depth_name(depth);
            let latency = per_depth[idx][rep];
            run.push(Metric::new(
                format!("p50_ms_{name}"),
                format!("lease p50, {name} queued"),
                "ms",
                latency.p50_ms,
            ));
            run.push(Metric::new(
                format!("p99_ms_{name}"),
                format!("lease p99, {name} queued"),
                "ms",
                latency.p99_ms,
            ));
        }
        if let (Some(first), Some(last)) = (per_depth.first(), per_depth.last()) {
            let (shallow, deep) = (depths[0], depths[depths.len() - 1]);
            run.push(
                Metric::new(
                    "p50_ratio",
                    format!(
                        "p50 at {} ÷ p50 at {}",
                        depth_name(deep),
                        depth_name(shallow)
                    ),
                    "×",
                    last[rep].p50_ms / first[rep].p50_ms,
                )
                .target(Bound::AtMost(MAX_RATIO)),
            );
        }
        runs.push(run);
    }
    Ok(FigureResult {
        id: "depth",
        title: "5. Queue depth",
        method: format!(
            "one simulated agent; {} queued no-op jobs of its kind, inserted straight into the stopped coordinator's database with `kobo_queue::store::insert_job` in transactions of 50,000, then the coordinator restarted; {samples} lease requests per run and depth (`max_jobs` 1, no parking; {WARMUP} untimed first), each followed by its report and one new submit, so the depth holds.",
            depths
                .iter()
                .map(|d| depth_name(*d))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        runs,
    })
}
