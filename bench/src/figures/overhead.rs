//! Figure 2, dispatch overhead: a client submits a job and waits for its
//! result (`GET /v1/jobs/{id}/wait`); the end-to-end time minus the LLM's
//! own time (the `sim` backend at a fixed latency, timed by the agent) is
//! what kobo adds: submit, commit, hand-off, lease answer, report, commit,
//! the waiting client woken.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use kobo_protocol::JobId;
use tokio::sync::mpsc;

use super::{Env, noop};
use crate::agents::{self, AgentEvent, AgentSpec, Fleet, Probe};
use crate::coordinator::{Coordinator, Timings};
use crate::report::{FigureResult, Metric};
use crate::stats;

/// Simulated agents (4 slots each): always more free slots than jobs in flight.
const AGENTS: usize = 8;
const AGENTS_QUICK: usize = 2;
/// The sim backend's fixed latency.
const LLM_LATENCY: Duration = Duration::from_millis(100);
const LLM_LATENCY_QUICK: Duration = Duration::from_millis(20);
/// Clients each submitting and waiting for one job at a time.
const CLIENTS: usize = 8;
const CLIENTS_QUICK: usize = 4;
/// Jobs measured per run.
const JOBS: usize = 400;
const JOBS_QUICK: usize = 24;
/// Longest one job may take end to end.
const WAIT_LIMIT: Duration = Duration::from_secs(30);
const KIND: &str = "overhead";

pub(crate) async fn run(env: &Env) -> anyhow::Result<FigureResult> {
    let n_agents = env.pick(AGENTS, AGENTS_QUICK);
    let latency = env.pick(LLM_LATENCY, LLM_LATENCY_QUICK);
    let n_clients = env.pick(CLIENTS, CLIENTS_QUICK);
    let jobs = env.pick(JOBS, JOBS_QUICK);
    let mut coordinator = Coordinator::start(&env.dir("overhead"), Timings::default()).await?;
    let nodes = agents::enroll(
        &coordinator,
        "overhead",
        n_agents,
        &env.dir("overhead-agents"),
    )
    .await?;
    let spec = AgentSpec {
        kind: KIND.into(),
        max_workers: 4,
        max_jobs_per_lease: 4,
        llm_latency: latency,
        long_poll_ms: kobo_coord::config::DEFAULT_LONG_POLL.as_millis() as u64,
    };
    let mut runs = Vec::new();
    for _ in 0..env.repeats {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let fleet_agents = agents::connect(&coordinator, &nodes, &spec).await?;
        let fleet = Fleet::run(fleet_agents, &spec, Arc::new(Probe::with_events(events_tx)))?;
        // The LLM's own time of each job, as its agent timed it.
        let llm_times: Arc<Mutex<HashMap<JobId, Duration>>> = Arc::default();
        let collector = {
            let llm_times = llm_times.clone();
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    if let AgentEvent::Reported { job_id, llm, .. } = event {
                        llm_times
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(job_id, llm);
                    }
                }
            })
        };
        let client = coordinator.admin()?;
        let per_client = jobs.div_ceil(n_clients);
        let ends: Vec<Vec<(JobId, Duration)>> = try_join_all((0..n_clients).map(|_| {
            let client = client.clone();
            async move {
                let mut ends = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let sent = Instant::now();
                    let id = client.submit(&noop(KIND)).await?.id;
                    let job = client.wait(id, WAIT_LIMIT).await?;
                    anyhow::ensure!(
                        job.state.is_terminal(),
                        "job {id} not done in {WAIT_LIMIT:?}"
                    );
                    ends.push((id, sent.elapsed()));
                }
                anyhow::Ok(ends)
            }
        }))
        .await?;
        let probe = fleet.stop().await;
        super::check_agents(&probe, "overhead")?;
        // The last sender of events goes with the probe; then the collector ends.
        drop(probe);
        collector.await?;
        let llm_times = llm_times.lock().unwrap_or_else(PoisonError::into_inner);
        let mut overheads = Vec::new();
        for (id, end_to_end) in ends.into_iter().flatten() {
            let llm = llm_times
                .get(&id)
                .copied()
                .ok_or_else(|| anyhow::anyhow!("no agent timed job {id}"))?;
            overheads.push(end_to_end.saturating_sub(llm));
        }
        let overhead = stats::latency(&overheads);
        runs.push(vec![
            Metric::new("p50_ms", "p50", "ms", overhead.p50_ms),
            Metric::new("p99_ms", "p99", "ms", overhead.p99_ms),
        ]);
    }
    coordinator.stop().await?;
    Ok(FigureResult {
        id: "overhead",
        title: "2. Dispatch overhead",
        method: format!(
            "{n_agents} simulated agents × 4 slots on the `sim` backend at {latency:?}; {n_clients} clients each submit one job and wait for it (`GET /v1/jobs/{{id}}/wait`), {} jobs in all; end-to-end (submit sent → result answered) minus the LLM's own time as the agent measured it.",
            per_client_total(jobs, n_clients)
        ),
        runs,
    })
}

fn per_client_total(jobs: usize, clients: usize) -> usize {
    jobs.div_ceil(clients) * clients
}
