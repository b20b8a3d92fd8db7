//! Figure 3, throughput: no-op jobs per second through the full API with
//! 50 agents × 4 slots: (a) one job per submit and per lease, (b) batch
//! submits and multi-job leases. From the first submit sent to the last
//! result accepted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::future::try_join_all;

use super::{Env, noop};
use crate::agents::{self, AgentSpec, Fleet, Probe};
use crate::coordinator::{Coordinator, Timings};
use crate::report::{Bound, FigureResult, Metric};
use crate::system;

/// Simulated agents, 4 slots each.
const AGENTS: usize = 50;
const AGENTS_QUICK: usize = 8;
/// Jobs per run with one job per submit.
const SINGLE_JOBS: usize = 20_000;
const SINGLE_JOBS_QUICK: usize = 400;
/// Jobs per run with batch submits.
const BATCH_JOBS: usize = 100_000;
const BATCH_JOBS_QUICK: usize = 2_000;
/// Jobs per batch submit (the API takes up to 1000).
const BATCH_SIZE: usize = 500;
const BATCH_SIZE_QUICK: usize = 100;
/// Concurrent submit loops, and the client connections they share.
const SUBMITTERS: usize = 32;
const SUBMITTERS_QUICK: usize = 8;
const CLIENTS: usize = 8;
const CLIENTS_QUICK: usize = 2;
/// Time for freshly started agents to park their first lease request.
const SETTLE: Duration = Duration::from_millis(300);
/// How often the count of reported jobs is looked at.
const POLL: Duration = Duration::from_millis(2);
/// Longest one mode may take before the figure gives up.
const PATIENCE: Duration = Duration::from_secs(600);
const KIND: &str = "noop";
/// The coordinator's one writer thread (its name as `/proc` shows it).
const WRITER_THREAD: &str = "kobo-store-writ";
/// The bound on single submits with the store on PostgreSQL.
const SINGLE_TARGET_POSTGRES: f64 = 2_000.0;

#[derive(Debug, Clone, Copy)]
enum Mode {
    Single,
    Batch,
}

pub(crate) async fn run(env: &Env) -> anyhow::Result<FigureResult> {
    let n_agents = env.pick(AGENTS, AGENTS_QUICK);
    let database = env.database("throughput").await?;
    let timings = Timings {
        database: database.as_ref().map(|d| d.url.clone()),
        ..Timings::default()
    };
    let mut coordinator = Coordinator::start(&env.dir("throughput"), timings).await?;
    let nodes = agents::enroll(&coordinator, "tp", n_agents, &env.dir("throughput-agents")).await?;
    let clients = (0..env.pick(CLIENTS, CLIENTS_QUICK))
        .map(|_| coordinator.admin())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut runs = Vec::new();
    for _ in 0..env.repeats {
        let mut run = Vec::new();
        for mode in [Mode::Single, Mode::Batch] {
            let (jobs, per_lease) = match mode {
                Mode::Single => (env.pick(SINGLE_JOBS, SINGLE_JOBS_QUICK), 1),
                Mode::Batch => (env.pick(BATCH_JOBS, BATCH_JOBS_QUICK), 4),
            };
            let spec = AgentSpec {
                kind: KIND.into(),
                max_workers: 4,
                max_jobs_per_lease: per_lease,
                llm_latency: Duration::ZERO,
                long_poll_ms: kobo_queue::config::DEFAULT_LONG_POLL.as_millis() as u64,
                stagger: Duration::ZERO,
            };
            let fleet = Fleet::run(
                agents::connect(&coordinator, &nodes, &spec).await?,
                &spec,
                Arc::new(Probe::default()),
            )?;
            tokio::time::sleep(SETTLE).await;
            let coordinator_cpu = system::cpu_seconds(coordinator.pid()?)?;
            let writer_cpu = system::thread_cpu_seconds(coordinator.pid()?, WRITER_THREAD)?;
            let own_cpu = system::cpu_seconds(std::process::id())?;
            let (rate, submit_rate) = measure(env, mode, jobs, &clients, &fleet).await?;
            let per_job_us = |cpu: f64| cpu * 1e6 / jobs as f64;
            let coordinator_cpu =
                per_job_us(system::cpu_seconds(coordinator.pid()?)? - coordinator_cpu);
            let own_cpu = per_job_us(system::cpu_seconds(std::process::id())? - own_cpu);
            let writer_cpu = per_job_us(
                system::thread_cpu_seconds(coordinator.pid()?, WRITER_THREAD)? - writer_cpu,
            );
            let probe = fleet.stop().await;
            super::check_agents(&probe, "throughput")?;
            let (key, label, what, target) = match mode {
                Mode::Single => (
                    "single",
                    "(a)",
                    "one job per submit",
                    Some(env.pick_store(10_000.0, SINGLE_TARGET_POSTGRES)),
                ),
                Mode::Batch => (
                    "batch",
                    "(b)",
                    "batch submits",
                    // No bound was set for batches on PostgreSQL.
                    env.pick_store(Some(30_000.0), None),
                ),
            };
            let rate = Metric::new(
                format!("{key}_jobs_per_s"),
                format!("{label} {what}"),
                "jobs/s",
                rate,
            );
            run.push(match target {
                Some(target) => rate.target(Bound::AtLeast(target)),
                None => rate,
            });
            run.push(Metric::new(
                format!("{key}_submits_per_s"),
                format!("{label} submits accepted"),
                "jobs/s",
                submit_rate,
            ));
            run.push(Metric::new(
                format!("{key}_coordinator_cpu_us"),
                format!("{label} kobo-coord CPU per job"),
                "µs",
                coordinator_cpu,
            ));
            run.push(Metric::new(
                format!("{key}_writer_cpu_us"),
                format!("{label} of it, the store's writer thread"),
                "µs",
                writer_cpu,
            ));
            run.push(Metric::new(
                format!("{key}_generator_cpu_us"),
                format!("{label} load generator CPU per job"),
                "µs",
                own_cpu,
            ));
        }
        runs.push(run);
    }
    coordinator.stop().await?;
    super::drop_database(database).await?;
    Ok(FigureResult {
        id: "throughput",
        title: "3. Throughput",
        method: format!(
            "{n_agents} simulated agents × 4 slots, no-op jobs (the `sim` backend at zero latency); {} concurrent submit loops over {} client connections. (a) {} jobs, one per `POST /v1/jobs`, agents asking for one job per lease; (b) {} jobs in batches of {} (`POST /v1/jobs/batch`), agents asking for up to 4 jobs per lease (all free slots, as `kobo-agent` does). Jobs/s from the first submit sent to the last result accepted; 'submits accepted' is the rate at which the submits alone were answered; CPU per job is the user + system time of `kobo-coord` (and, of it, of its one store writer thread, which every write goes through) and of `kobo-bench` (clients and agents) during the mode, ÷ jobs.",
            env.pick(SUBMITTERS, SUBMITTERS_QUICK),
            env.pick(CLIENTS, CLIENTS_QUICK),
            env.pick(SINGLE_JOBS, SINGLE_JOBS_QUICK),
            env.pick(BATCH_JOBS, BATCH_JOBS_QUICK),
            env.pick(BATCH_SIZE, BATCH_SIZE_QUICK),
        ),
        runs,
    })
}

/// Submits `jobs` jobs and waits until the agents reported them all.
/// Returns (jobs/s end to end, jobs/s submitted).
async fn measure(
    env: &Env,
    mode: Mode,
    jobs: usize,
    clients: &[kobo_client::ApiClient],
    fleet: &Fleet,
) -> anyhow::Result<(f64, f64)> {
    let submitters = env.pick(SUBMITTERS, SUBMITTERS_QUICK);
    let batch = env.pick(BATCH_SIZE, BATCH_SIZE_QUICK);
    let before = fleet.probe.reported();
    let started = Instant::now();
    let submitting = try_join_all((0..submitters).map(|idx| {
        let client = clients[idx % clients.len()].clone();
        let mine = jobs / submitters + usize::from(idx < jobs % submitters);
        async move {
            match mode {
                Mode::Single => {
                    for _ in 0..mine {
                        client.submit(&noop(KIND)).await?;
                    }
                }
                Mode::Batch => {
                    let mut left = mine;
                    while left > 0 {
                        let n = left.min(batch);
                        client.submit_batch(vec![noop(KIND); n]).await?;
                        left -= n;
                    }
                }
            }
            anyhow::Ok(())
        }
    }));
    let submitted = async {
        submitting.await?;
        anyhow::Ok(started.elapsed())
    };
    let reported = async {
        while fleet.probe.reported() - before < jobs as u64 {
            if started.elapsed() > PATIENCE {
                bail!(
                    "only {} of {jobs} jobs reported after {PATIENCE:?}",
                    fleet.probe.reported() - before
                );
            }
            tokio::time::sleep(POLL).await;
        }
        anyhow::Ok(started.elapsed())
    };
    let (submitted, reported) = tokio::try_join!(submitted, reported)?;
    Ok((
        jobs as f64 / reported.as_secs_f64(),
        jobs as f64 / submitted.as_secs_f64(),
    ))
}
