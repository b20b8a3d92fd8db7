//! Figure 1, pickup latency: with agents parked in long-poll, jobs are
//! submitted one at a time; from the moment the submit request is sent to
//! the moment an agent holds the lease answer carrying the job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Env, noop, wait_event};
use crate::agents::{self, AgentEvent, AgentSpec, Fleet, Probe};
use crate::coordinator::{Coordinator, Timings};
use crate::report::{Bound, FigureResult, Metric};
use crate::stats;

/// Parked agents (4 slots each): one takes the job, the others stay parked.
const AGENTS: usize = 4;
/// Jobs measured per run, normally and with `--quick`.
const JOBS: usize = 500;
const JOBS_QUICK: usize = 40;
/// Jobs run before measuring (connections and caches warm up).
const WARMUP: usize = 20;
/// Pause after a job was reported before the next submit, so the agent that
/// ran it is parked again: jobs really go one at a time to parked agents.
const GAP: Duration = Duration::from_millis(5);
/// Time for freshly started agents to park their first lease request.
const SETTLE: Duration = Duration::from_millis(300);
const KIND: &str = "pickup";
/// The bound on the median with the store on PostgreSQL (a commit
/// is a round trip to the server and its WAL flush).
const P50_TARGET_POSTGRES_MS: f64 = 3.0;

pub(crate) async fn run(env: &Env) -> anyhow::Result<FigureResult> {
    let jobs = env.pick(JOBS, JOBS_QUICK);
    let database = env.database("pickup").await?;
    let timings = Timings {
        database: database.as_ref().map(|d| d.url.clone()),
        ..Timings::default()
    };
    let mut coordinator = Coordinator::start(&env.dir("pickup"), timings).await?;
    let nodes = agents::enroll(&coordinator, "pickup", AGENTS, &env.dir("pickup-agents")).await?;
    let client = coordinator.admin()?;
    let spec = AgentSpec {
        kind: KIND.into(),
        max_workers: 4,
        max_jobs_per_lease: 4,
        llm_latency: Duration::ZERO,
        long_poll_ms: kobo_queue::config::DEFAULT_LONG_POLL.as_millis() as u64,
        stagger: Duration::ZERO,
    };
    let mut runs = Vec::new();
    for _ in 0..env.repeats {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let fleet_agents = agents::connect(&coordinator, &nodes, &spec).await?;
        let fleet = Fleet::run(fleet_agents, &spec, Arc::new(Probe::with_events(events_tx)))?;
        tokio::time::sleep(SETTLE).await;
        let mut samples = Vec::with_capacity(jobs);
        for idx in 0..WARMUP + jobs {
            let sent = Instant::now();
            let id = client.submit(&noop(KIND)).await?.id;
            let started = wait_event(&mut events, id, |e| match e {
                AgentEvent::Started { at, .. } => Some(*at),
                _ => None,
            })
            .await?;
            wait_event(&mut events, id, |e| {
                matches!(e, AgentEvent::Reported { .. }).then_some(())
            })
            .await?;
            if idx >= WARMUP {
                samples.push(started.duration_since(sent));
            }
            tokio::time::sleep(GAP).await;
        }
        let probe = fleet.stop().await;
        super::check_agents(&probe, "pickup")?;
        let latency = stats::latency(&samples);
        runs.push(vec![
            Metric::new("p50_ms", "p50", "ms", latency.p50_ms)
                .target(Bound::AtMost(env.pick_store(1.0, P50_TARGET_POSTGRES_MS))),
            Metric::new("p99_ms", "p99", "ms", latency.p99_ms).target(Bound::AtMost(5.0)),
        ]);
    }
    coordinator.stop().await?;
    super::drop_database(database).await?;
    Ok(FigureResult {
        id: "pickup",
        title: "1. Pickup latency",
        method: format!(
            "{AGENTS} simulated agents × 4 slots parked in long-poll; {jobs} no-op jobs (after {WARMUP} warm-up jobs) submitted one at a time with `POST /v1/jobs`, each after the previous one was reported and a {GAP:?} pause; time from sending the submit to the agent holding the lease answer (the job is handed to a parked agent inside the submitting transaction and delivered after its commit)."
        ),
        runs,
    })
}
