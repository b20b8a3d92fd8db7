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
        long_poll_ms: kobo_queue::config::DEFAULT_LONG_POLL.as_millis() as u64,
        stagger: Duration::ZERO,
    };
    let mut runs = Vec::new();
    for _ in 0..env.repeats {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let fleet_agents = agents::connect(&coordinator, &nodes, &spec).await?;
        let fleet = Fleet::run(fleet_agents, &spec, Arc::new(Probe::with_events(events_tx)))?;
        // What the agents saw of each job: when it started, when its LLM
        // call ended and how long it took, when its report was accepted.
        let seen: Arc<Mutex<HashMap<JobId, Seen>>> = Arc::default();
        let collector = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                    match event {
                        AgentEvent::Started { job_id, at } => {
                            seen.entry(job_id).or_default().started = Some(at);
                        }
                        AgentEvent::Reported {
                            job_id,
                            llm_end,
                            llm,
                            at,
                        } => {
                            let job = seen.entry(job_id).or_default();
                            job.llm = Some((llm_end, llm));
                            job.reported = Some(at);
                        }
                    }
                }
            })
        };
        let client = coordinator.admin()?;
        let per_client = jobs.div_ceil(n_clients);
        let ends: Vec<Vec<(JobId, Instant, Instant)>> = try_join_all((0..n_clients).map(|_| {
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
                    ends.push((id, sent, Instant::now()));
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
        let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        let mut parts = Parts::default();
        for (id, sent, done) in ends.into_iter().flatten() {
            let job = seen.get(&id);
            let (Some(started), Some((llm_end, llm)), Some(reported)) = (
                job.and_then(|j| j.started),
                job.and_then(|j| j.llm),
                job.and_then(|j| j.reported),
            ) else {
                anyhow::bail!("the agents did not see all of job {id}");
            };
            parts
                .overhead
                .push(done.duration_since(sent).saturating_sub(llm));
            parts.to_start.push(started.saturating_duration_since(sent));
            parts
                .report
                .push(reported.saturating_duration_since(llm_end));
            parts.answer.push(done.saturating_duration_since(reported));
        }
        let overheads = parts.overhead;
        let overhead = stats::latency(&overheads);
        let p50 = |samples: &[Duration]| stats::percentile_ms(samples, 0.5);
        runs.push(vec![
            Metric::new("p50_ms", "p50", "ms", overhead.p50_ms),
            Metric::new("p99_ms", "p99", "ms", overhead.p99_ms),
            Metric::new(
                "to_start_p50_ms",
                "p50 of it: submit sent → agent started",
                "ms",
                p50(&parts.to_start),
            ),
            Metric::new(
                "report_p50_ms",
                "p50 of it: LLM done → report accepted",
                "ms",
                p50(&parts.report),
            ),
            Metric::new(
                "answer_p50_ms",
                "p50 of it: report accepted → waiting client answered",
                "ms",
                p50(&parts.answer),
            ),
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

/// What the agents saw of one job.
#[derive(Debug, Default)]
struct Seen {
    started: Option<Instant>,
    llm: Option<(Instant, Duration)>,
    reported: Option<Instant>,
}

/// Each job's overhead and its parts.
#[derive(Debug, Default)]
struct Parts {
    overhead: Vec<Duration>,
    to_start: Vec<Duration>,
    report: Vec<Duration>,
    answer: Vec<Duration>,
}

fn per_client_total(jobs: usize, clients: usize) -> usize {
    jobs.div_ceil(clients) * clients
}
