//! Figure 10, fleet: 10,000 simulated agents on one coordinator, each with
//! its own certificate and its own connection, heartbeating every 3 s and
//! parked in long-poll; the coordinator's resident memory and CPU for
//! holding them, the heartbeats' round trip, and the pickup latency of jobs
//! submitted one at a time meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Env, noop, wait_event};
use crate::agents::{self, AgentEvent, AgentSpec, Fleet, Probe};
use crate::coordinator::{Coordinator, Timings};
use crate::report::{Bound, FigureResult, Metric};
use crate::{stats, system};

const AGENTS: usize = 10_000;
const AGENTS_QUICK: usize = 50;
const KIND: &str = "fleet";
/// The agents' first lease requests (and so their heartbeats) are spread
/// over one heartbeat interval, as real agents start at different times.
const STAGGER: Duration = Duration::from_secs(3);
/// Parked and heartbeating before the window opens.
const SETTLE: Duration = Duration::from_secs(10);
const SETTLE_QUICK: Duration = Duration::from_secs(4);
/// The measured window.
const WINDOW: Duration = Duration::from_secs(20);
const WINDOW_QUICK: Duration = Duration::from_secs(3);
/// Pause between the window's one-at-a-time submits.
const SUBMIT_EVERY: Duration = Duration::from_millis(100);

pub(crate) async fn run(env: &Env) -> anyhow::Result<FigureResult> {
    let n = env
        .fleet_agents
        .unwrap_or_else(|| env.pick(AGENTS, AGENTS_QUICK))
        .max(1);
    let settle = env.pick(SETTLE, SETTLE_QUICK);
    let window = env.pick(WINDOW, WINDOW_QUICK);
    let mut coordinator = Coordinator::start(&env.dir("fleet"), Timings::default()).await?;
    let idle_rss = coordinator.rss()?;
    let enroll_started = Instant::now();
    let nodes = agents::enroll(&coordinator, "fleet", n, &env.dir("fleet-agents")).await?;
    let enrolled_in = enroll_started.elapsed();
    let client = coordinator.admin()?;
    let spec = AgentSpec {
        kind: KIND.into(),
        max_workers: 1,
        max_jobs_per_lease: 1,
        llm_latency: Duration::ZERO,
        long_poll_ms: kobo_queue::config::DEFAULT_LONG_POLL.as_millis() as u64,
        stagger: STAGGER,
    };
    let mut runs = Vec::new();
    for _ in 0..env.repeats {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let probe = Arc::new(Probe::with_events(events_tx));
        let fleet = Fleet::run(
            agents::connect(&coordinator, &nodes, &spec).await?,
            &spec,
            probe.clone(),
        )?;
        tokio::time::sleep(STAGGER + settle).await;
        let pid = coordinator.pid()?;
        let opened = Instant::now();
        let cpu_before = system::cpu_seconds(pid)?;
        let own_before = system::cpu_seconds(std::process::id())?;
        let mut pickups = Vec::new();
        while opened.elapsed() < window {
            let sent = Instant::now();
            let id = client.submit(&noop(KIND)).await?.id;
            let started = wait_event(&mut events, id, |e| match e {
                AgentEvent::Started { at, .. } => Some(*at),
                _ => None,
            })
            .await?;
            pickups.push(started.duration_since(sent));
            tokio::time::sleep(SUBMIT_EVERY).await;
        }
        let cpu = (system::cpu_seconds(pid)? - cpu_before) / opened.elapsed().as_secs_f64();
        let own_cpu = (system::cpu_seconds(std::process::id())? - own_before)
            / opened.elapsed().as_secs_f64();
        let rss = coordinator.rss()?;
        let (heartbeats, handled) = probe.heartbeats_since(opened);
        let fleet_probe = fleet.stop().await;
        super::check_agents(&fleet_probe, "fleet")?;
        let heartbeat = stats::latency(&heartbeats);
        let handling = stats::latency(&handled);
        let pickup = stats::latency(&pickups);
        let per_agent_kib = (rss.now_mib - idle_rss.now_mib).max(0.0) * 1024.0 / n as f64;
        let rss_mib = rss.now_mib;
        let targets = n == AGENTS;
        let with = |m: Metric, bound: Bound| if targets { m.target(bound) } else { m };
        runs.push(vec![
            with(
                Metric::new(
                    "rss_mib",
                    format!("{n} agents: coordinator RSS"),
                    "MiB",
                    rss_mib,
                ),
                Bound::AtMost(1024.0),
            ),
            Metric::new(
                "kib_per_agent",
                format!("{n} agents: RSS per agent (above the idle coordinator's)"),
                "KiB",
                per_agent_kib,
            ),
            with(
                Metric::new(
                    "cpu_cores",
                    format!("{n} agents: coordinator CPU, parked and heartbeating"),
                    "cores",
                    cpu,
                ),
                Bound::AtMost(1.0),
            ),
            Metric::new(
                "bench_cpu_cores",
                format!(
                    "{n} agents: the simulated agents' CPU (kobo-bench itself, on the same machine)"
                ),
                "cores",
                own_cpu,
            ),
            with(
                Metric::new(
                    "heartbeat_p99_ms",
                    format!("{n} agents: heartbeat round trip p99"),
                    "ms",
                    heartbeat.p99_ms,
                ),
                Bound::AtMost(50.0),
            ),
            Metric::new(
                "heartbeat_p50_ms",
                format!("{n} agents: heartbeat round trip p50"),
                "ms",
                heartbeat.p50_ms,
            ),
            Metric::new(
                "heartbeat_handled_p50_ms",
                format!("{n} agents: heartbeat time in the coordinator p50"),
                "ms",
                handling.p50_ms,
            ),
            Metric::new(
                "heartbeat_handled_p99_ms",
                format!("{n} agents: heartbeat time in the coordinator p99"),
                "ms",
                handling.p99_ms,
            ),
            Metric::new(
                "heartbeats_per_s",
                format!("{n} agents: heartbeats per second"),
                "/s",
                heartbeats.len() as f64 / window.as_secs_f64(),
            ),
            Metric::new(
                "pickup_p50_ms",
                format!("{n} agents: pickup p50"),
                "ms",
                pickup.p50_ms,
            ),
            Metric::new(
                "pickup_p99_ms",
                format!("{n} agents: pickup p99"),
                "ms",
                pickup.p99_ms,
            ),
        ]);
    }
    coordinator.stop().await?;
    Ok(FigureResult {
        id: "fleet",
        title: "10. A fleet of 10,000",
        method: format!(
            "{n} simulated agents, each enrolled with its own key and certificate (enrolled in {enrolled_in:.0?}) and on its own HTTPS connection, registered with one slot, heartbeating every 3 s (the default) and parked in long-poll, their starts spread over {STAGGER:?}; after {settle:?} settled, over a {window:?} window: the coordinator's RSS (and per agent, above its idle {} MiB), its CPU (utime + stime from /proc) per second, every heartbeat's round trip as the agent measured it and the part of it the coordinator spent (from the request's arrival to its answer, as the answer's `coordinator_ms` says), and the pickup latency of no-op jobs submitted one at a time every {SUBMIT_EVERY:?} (submit sent → lease answer at an agent).",
            idle_rss.now_mib.round()
        ),
        runs,
    })
}
