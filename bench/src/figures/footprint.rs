//! Figure 7, footprint: the resident memory (`VmRSS` in `/proc/<pid>/status`)
//! of an idle real `kobo-agent`, and of the coordinator after a million
//! jobs went through it with 1,000 simulated agents connected.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::{Env, prefill};
use crate::agents::{self, AgentSpec, Fleet, Probe};
use crate::coordinator::{Coordinator, Timings};
use crate::real_agent::{RealAgent, RealAgentSpec};
use crate::report::{Bound, FigureResult, Metric};

/// Jobs queued (straight into the database) and then run by the fleet.
const JOBS: usize = 1_000_000;
const JOBS_QUICK: usize = 2_000;
/// Simulated agents connected, 4 slots each.
const AGENTS: usize = 1000;
const AGENTS_QUICK: usize = 20;
/// How long the real agent idles (registered, parked, heartbeating every
/// 3 s by default) before it is weighed.
const IDLE: Duration = Duration::from_secs(7);
const IDLE_QUICK: Duration = Duration::from_secs(2);
/// How long the fleet idles, parked, after the last job, before the
/// coordinator is weighed.
const SETTLE: Duration = Duration::from_secs(5);
const SETTLE_QUICK: Duration = Duration::from_secs(1);
/// Longest the fleet may take to run every job.
const PATIENCE: Duration = Duration::from_secs(1800);
/// How often progress is looked at.
const POLL: Duration = Duration::from_millis(100);
const KIND: &str = "bulk";

pub(crate) async fn run(env: &Env) -> anyhow::Result<FigureResult> {
    let jobs = env.pick(JOBS, JOBS_QUICK);
    let n_agents = env.pick(AGENTS, AGENTS_QUICK);
    let dir = env.dir("footprint");
    let mut coordinator = Coordinator::start(&dir, Timings::default()).await?;
    coordinator.stop().await?;
    prefill(&dir, KIND, jobs).await?;
    coordinator.restart().await?;
    let start_rss = coordinator.rss()?;
    let admin = coordinator.admin()?;

    // An idle real agent.
    let mut agent = RealAgent::join(
        &coordinator,
        &admin,
        RealAgentSpec {
            node_id: "idle-agent",
            kind: "idle",
            max_workers: 4,
            sim_latency: Duration::from_millis(200),
            llm_endpoint: None,
        },
        &env.dir("footprint-agents"),
    )
    .await?;
    tokio::time::sleep(env.pick(IDLE, IDLE_QUICK)).await;
    let agent_rss = agent.rss()?;
    agent.stop().await?;

    // The coordinator with the fleet running every queued job.
    let nodes = agents::enroll(&coordinator, "fp", n_agents, &env.dir("footprint-fleet")).await?;
    let spec = AgentSpec {
        kind: KIND.into(),
        max_workers: 4,
        max_jobs_per_lease: 4,
        llm_latency: Duration::ZERO,
        long_poll_ms: kobo_queue::config::DEFAULT_LONG_POLL.as_millis() as u64,
        stagger: Duration::ZERO,
    };
    let connected = agents::connect(&coordinator, &nodes, &spec).await?;
    tokio::time::sleep(env.pick(SETTLE, SETTLE_QUICK)).await;
    let connected_rss = coordinator.rss()?;
    let fleet = Fleet::run(connected, &spec, Arc::new(Probe::default()))?;
    let started = Instant::now();
    while fleet.probe.reported() < jobs as u64 {
        if started.elapsed() > PATIENCE {
            bail!(
                "only {} of {jobs} jobs ran in {PATIENCE:?}",
                fleet.probe.reported()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let ran_for = started.elapsed();
    tokio::time::sleep(env.pick(SETTLE, SETTLE_QUICK)).await;
    let coordinator_rss = coordinator.rss()?;
    let probe = fleet.stop().await;
    super::check_agents(&probe, "footprint")?;
    coordinator.stop().await?;
    let run = vec![
        Metric::new(
            "agent_rss_mib",
            "idle kobo-agent RSS",
            "MiB",
            agent_rss.now_mib,
        )
        .target(Bound::AtMost(15.0)),
        Metric::new(
            "coordinator_rss_mib",
            format!(
                "kobo-coord RSS, {} jobs run, {n_agents} agents connected",
                short(jobs)
            ),
            "MiB",
            coordinator_rss.now_mib,
        )
        .target(Bound::AtMost(100.0)),
        Metric::new(
            "coordinator_peak_mib",
            "kobo-coord peak RSS (VmHWM) during the run",
            "MiB",
            coordinator_rss.peak_mib,
        ),
        Metric::new(
            "coordinator_start_mib",
            format!("kobo-coord RSS at start, {} jobs queued", short(jobs)),
            "MiB",
            start_rss.now_mib,
        ),
        Metric::new(
            "coordinator_connected_mib",
            format!("kobo-coord RSS, {n_agents} agents connected, no job run yet"),
            "MiB",
            connected_rss.now_mib,
        ),
        Metric::new(
            "bulk_jobs_per_s",
            format!("{n_agents} agents running the queue"),
            "jobs/s",
            jobs as f64 / ran_for.as_secs_f64(),
        ),
    ];
    Ok(FigureResult {
        id: "footprint",
        title: "7. Footprint",
        method: format!(
            "measured once. An idle real `kobo-agent` (`--llm sim`, registered, parked in long-poll, heartbeating) after {:?}; then {} no-op jobs inserted straight into the stopped coordinator's database, the coordinator restarted, {n_agents} simulated agents × 4 slots enrolled, connected (one connection each) and run until every job was reported; the coordinator is weighed {:?} later with all agents still connected and parked.",
            env.pick(IDLE, IDLE_QUICK),
            short(jobs),
            env.pick(SETTLE, SETTLE_QUICK)
        ),
        runs: vec![run],
    })
}

fn short(n: usize) -> String {
    match n {
        n if n >= 1_000_000 => format!("{}M", n / 1_000_000),
        n if n >= 1000 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}
