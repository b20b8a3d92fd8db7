//! Figure 4, scaling: 1 to 200 simulated agents × 4 slots on the `sim`
//! backend at 200 ms, the queue never empty; achieved jobs/s over a
//! window after warm-up, divided by the ideal (slots ÷ latency).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use tokio::sync::mpsc;

use super::{Env, noop};
use crate::agents::{self, AgentEvent, AgentSpec, Fleet, Probe};
use crate::coordinator::{Coordinator, Timings};
use crate::report::{Bound, FigureResult, Metric};

/// Fleet sizes measured.
const COUNTS: &[usize] = &[1, 10, 50, 100, 200];
const COUNTS_QUICK: &[usize] = &[1, 4];
/// Worker slots per agent.
const SLOTS: u32 = 4;
/// The sim backend's latency.
const LLM_LATENCY: Duration = Duration::from_millis(200);
/// Running before the window opens (every slot busy, steady state).
const WARMUP: Duration = Duration::from_secs(2);
const WARMUP_QUICK: Duration = Duration::from_millis(500);
/// The measured window.
const WINDOW: Duration = Duration::from_secs(8);
const WINDOW_QUICK: Duration = Duration::from_secs(2);
/// Jobs queued beforehand, as a multiple of what the ideal fleet would run
/// in warm-up plus window: the queue never runs dry.
const BACKLOG_MARGIN: f64 = 1.25;
/// Jobs per batch submit when filling the queue, and batches in flight.
const FILL_BATCH: usize = 1000;
const FILL_SUBMITTERS: usize = 4;
/// The fleet size whose ratio has a target.
const TARGET_AGENTS: usize = 200;

pub(crate) async fn run(env: &Env) -> anyhow::Result<FigureResult> {
    let counts = env.pick(COUNTS, COUNTS_QUICK);
    let warmup = env.pick(WARMUP, WARMUP_QUICK);
    let window = env.pick(WINDOW, WINDOW_QUICK);
    let most = counts.iter().copied().max().unwrap_or(1);
    let mut coordinator = Coordinator::start(&env.dir("scaling"), Timings::default()).await?;
    let nodes = agents::enroll(&coordinator, "scale", most, &env.dir("scaling-agents")).await?;
    let client = coordinator.admin()?;
    let mut runs = Vec::new();
    for rep in 0..env.repeats {
        let mut run = Vec::new();
        for &n in counts {
            // A kind of its own: leftovers of other sizes are not taken.
            let kind = format!("scale-{n}-{rep}");
            let ideal = n as f64 * SLOTS as f64 / LLM_LATENCY.as_secs_f64();
            let backlog = (ideal * (warmup + window).as_secs_f64() * BACKLOG_MARGIN) as usize
                + n * SLOTS as usize;
            fill(&client, &kind, backlog).await?;
            let spec = AgentSpec {
                kind: kind.clone(),
                max_workers: SLOTS,
                max_jobs_per_lease: SLOTS,
                llm_latency: LLM_LATENCY,
                long_poll_ms: kobo_queue::config::DEFAULT_LONG_POLL.as_millis() as u64,
                stagger: LLM_LATENCY,
            };
            let (events_tx, events) = mpsc::unbounded_channel();
            let fleet = Fleet::run(
                agents::connect(&coordinator, &nodes[..n], &spec).await?,
                &spec,
                Arc::new(Probe::with_events(events_tx)),
            )?;
            let collector = tokio::spawn(llm_intervals(events));
            tokio::time::sleep(warmup).await;
            let opened = Instant::now();
            tokio::time::sleep(window).await;
            let closed = Instant::now();
            let probe = fleet.stop().await;
            super::check_agents(&probe, "scaling")?;
            // The last sender of events goes with the probe.
            drop(probe);
            let intervals = collector.await?;
            let achieved = jobs_in_window(&intervals, opened, closed)
                / closed.duration_since(opened).as_secs_f64();
            let ratio = Metric::new(
                format!("ratio_{n}"),
                format!("{n} agents: achieved ÷ ideal"),
                "×",
                achieved / ideal,
            );
            run.push(if n == TARGET_AGENTS {
                ratio.target(Bound::AtLeast(0.97))
            } else {
                ratio
            });
            run.push(Metric::new(
                format!("jobs_per_s_{n}"),
                format!("{n} agents: achieved (ideal {ideal:.0})"),
                "jobs/s",
                achieved,
            ));
            run.push(Metric::new(
                format!("llm_overshoot_ms_{n}"),
                format!("{n} agents: mean `sim` call beyond the {LLM_LATENCY:?} asked"),
                "ms",
                mean_ms(&intervals) - LLM_LATENCY.as_secs_f64() * 1000.0,
            ));
        }
        runs.push(run);
    }
    coordinator.stop().await?;
    Ok(FigureResult {
        id: "scaling",
        title: "4. Scaling",
        method: format!(
            "{counts:?} simulated agents × {SLOTS} slots on the `sim` backend at {LLM_LATENCY:?} (ideal: agents × {SLOTS} ÷ {LLM_LATENCY:?} jobs/s); the queue is filled beforehand with batch submits ({BACKLOG_MARGIN}× what the ideal fleet runs) so it never runs dry; the agents' first requests are spread over one LLM latency, as real agents start at different times; jobs run in a {window:?} window after {warmup:?} of warm-up (each job counted by the share of its LLM call inside the window, so the figure does not depend on where the window's edges fall among the agents' cycles; the `sim` backend's own timer overshoot counts against kobo), ÷ the ideal."
        ),
        runs,
    })
}

/// The LLM call of every job the agents ran: (start, end).
async fn llm_intervals(mut events: mpsc::UnboundedReceiver<AgentEvent>) -> Vec<(Instant, Instant)> {
    let mut intervals = Vec::new();
    while let Some(event) = events.recv().await {
        if let AgentEvent::Reported { llm_end, llm, .. } = event
            && let Some(start) = llm_end.checked_sub(llm)
        {
            intervals.push((start, llm_end));
        }
    }
    intervals
}

/// The mean length of the LLM calls: how far the `sim` backend's timer
/// overshoots, which the ratio counts against kobo.
fn mean_ms(intervals: &[(Instant, Instant)]) -> f64 {
    let total: f64 = intervals
        .iter()
        .map(|&(start, end)| end.duration_since(start).as_secs_f64())
        .sum();
    total * 1000.0 / intervals.len().max(1) as f64
}

/// Jobs run inside [opened, closed], each counted by the share of its LLM
/// call that falls inside: unlike counting the results accepted, this does
/// not depend on where the window's edges fall among the agents' cycles.
fn jobs_in_window(intervals: &[(Instant, Instant)], opened: Instant, closed: Instant) -> f64 {
    intervals
        .iter()
        .map(|&(start, end)| {
            let inside = end
                .min(closed)
                .saturating_duration_since(start.max(opened))
                .as_secs_f64();
            let whole = end.duration_since(start).as_secs_f64();
            if whole > 0.0 { inside / whole } else { 0.0 }
        })
        .sum()
}

/// Queues `n` no-op jobs of `kind` with batch submits.
async fn fill(client: &kobo_client::ApiClient, kind: &str, n: usize) -> anyhow::Result<()> {
    let batches: Vec<usize> = (0..n.div_ceil(FILL_BATCH))
        .map(|idx| FILL_BATCH.min(n - idx * FILL_BATCH))
        .collect();
    let chunks: Vec<Vec<usize>> = batches
        .chunks(batches.len().div_ceil(FILL_SUBMITTERS).max(1))
        .map(<[usize]>::to_vec)
        .collect();
    try_join_all(chunks.into_iter().map(|sizes| {
        let client = client.clone();
        async move {
            for size in sizes {
                client.submit_batch(vec![noop(kind); size]).await?;
            }
            anyhow::Ok(())
        }
    }))
    .await?;
    Ok(())
}
