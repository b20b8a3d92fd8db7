//! Figure 10, fleet: 10,000 simulated agents on one coordinator, each with
//! its own certificate and its own connection, heartbeating every 3 s and
//! parked in long-poll; the coordinator's resident memory and CPU for
//! holding them, the heartbeats' round trip, and the pickup latency of jobs
//! submitted one at a time meanwhile.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Env, noop, wait_event};
use crate::agents::{self, AgentEvent, AgentSpec, Beat, Fleet, Probe};
use crate::coordinator::{Coordinator, Timings};
use crate::report::{Bound, FigureResult, Metric};
use crate::{stats, system};

const AGENTS: usize = 10_000;
const AGENTS_QUICK: usize = 50;
const KIND: &str = "fleet";
/// The agents start (register, then heartbeat and long-poll) one after
/// another over one long-poll period, as the agents of a real fleet start at
/// different times: their heartbeats and their long polls keep the phases
/// their starts gave them. Spread over less, every long poll of the fleet
/// would end, and be asked again, within that span each 25 s: a herd no
/// fleet that came up over more than a few seconds sends.
const STAGGER: Duration = kobo_queue::config::DEFAULT_LONG_POLL;
const STAGGER_QUICK: Duration = Duration::from_secs(3);
/// Parked and heartbeating before the window opens.
const SETTLE: Duration = Duration::from_secs(10);
const SETTLE_QUICK: Duration = Duration::from_secs(4);
/// The measured window.
const WINDOW: Duration = Duration::from_secs(20);
const WINDOW_QUICK: Duration = Duration::from_secs(3);
/// Pause between the window's one-at-a-time submits.
const SUBMIT_EVERY: Duration = Duration::from_millis(100);
/// The bench's control timer: how late its own runtime wakes a task that
/// is due (see [`LagProbe`]).
const LAG_TICK: Duration = Duration::from_millis(10);
/// Heartbeat sends are counted in slots this long to see whether the fleet
/// heartbeats as a herd (all in the same moment) or spread out.
const SEND_SLOT: Duration = Duration::from_millis(100);

pub(crate) async fn run(env: &Env) -> anyhow::Result<FigureResult> {
    let n = env
        .fleet_agents
        .unwrap_or_else(|| env.pick(AGENTS, AGENTS_QUICK))
        .max(1);
    let settle = env.pick(SETTLE, SETTLE_QUICK);
    let stagger = env.pick(STAGGER, STAGGER_QUICK);
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
        stagger,
    };
    let mut runs = Vec::new();
    for _ in 0..env.repeats {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let probe = Arc::new(Probe::with_events(events_tx));
        let fleet = Fleet::start(&coordinator, &nodes, &spec, probe.clone())?;
        tokio::time::sleep(stagger + settle).await;
        let pid = coordinator.pid()?;
        let lag = LagProbe::start();
        let opened = Instant::now();
        let opened_wall = std::time::SystemTime::now();
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
        let beats = probe.heartbeats_since(opened);
        let lags = lag.stop().await?;
        let fleet_probe = fleet.stop().await;
        super::check_agents(&fleet_probe, "fleet")?;
        write_samples(
            &env.dir("fleet"),
            runs.len(),
            (opened, opened_wall),
            &beats,
            &lags,
        )?;
        let heartbeats: Vec<Duration> = beats.iter().map(|b| b.rtt).collect();
        let handled: Vec<Duration> = beats.iter().map(|b| b.handled).collect();
        let heartbeat = stats::latency(&heartbeats);
        let handling = stats::latency(&handled);
        let lag = stats::latency(&lags.iter().map(|(_, lag)| *lag).collect::<Vec<_>>());
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
                "bench_lag_p99_ms",
                format!(
                    "{n} agents: the bench's own scheduling lag p99 (a {LAG_TICK:?} control timer woken late)"
                ),
                "ms",
                lag.p99_ms,
            ),
            Metric::new(
                "heartbeat_send_peak",
                format!(
                    "{n} agents: heartbeats sent in the busiest {SEND_SLOT:?}, over the mean (1: evenly spread)"
                ),
                "×",
                send_peak(opened, window, &beats),
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
            "{n} simulated agents, each enrolled with its own key and certificate (enrolled in {enrolled_in:.0?}) and on its own HTTPS connection, registered with one slot, heartbeating every 3 s (the default) and parked in long-poll, their starts (registration, then heartbeats and long polls) spread over {stagger:?} (one long poll), as a fleet that comes up over time; after {settle:?} settled, over a {window:?} window: the coordinator's RSS (and per agent, above its idle {} MiB), its CPU (utime + stime from /proc) per second, every heartbeat's round trip as the agent measured it and the part of it the coordinator spent (from the request's arrival to its answer, as the answer's `coordinator_ms` says), and the pickup latency of no-op jobs submitted one at a time every {SUBMIT_EVERY:?} (submit sent → lease answer at an agent).",
            idle_rss.now_mib.round()
        ),
        runs,
    })
}

/// The bench's own scheduling lag: a control task sleeps [`LAG_TICK`] over
/// and over and records how late each wake came. An agent's answer that has
/// arrived waits this long for its task to be polled, so the round trips
/// the agents measure include it: it is the load generator's share of the
/// tail, on a machine whose cores it shares with the coordinator.
struct LagProbe {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<(Instant, Duration)>>,
}

impl LagProbe {
    fn start() -> LagProbe {
        let stop = CancellationToken::new();
        let cancelled = stop.clone();
        let task = tokio::spawn(async move {
            let mut lags = Vec::new();
            loop {
                let due = Instant::now() + LAG_TICK;
                tokio::select! {
                    _ = cancelled.cancelled() => return lags,
                    _ = tokio::time::sleep_until(due.into()) => {
                        lags.push((due, Instant::now().saturating_duration_since(due)));
                    }
                }
            }
        });
        LagProbe { stop, task }
    }

    /// Every wake: when it was due, and how late it came.
    async fn stop(self) -> anyhow::Result<Vec<(Instant, Duration)>> {
        self.stop.cancel();
        self.task.await.context("the lag probe panicked")
    }
}

/// The most heartbeats sent in one [`SEND_SLOT`] of the window over the
/// mean per slot: about 1 when the fleet's heartbeats are spread evenly, the
/// number of slots in a heartbeat interval when they all go at once.
fn send_peak(opened: Instant, window: Duration, beats: &[Beat]) -> f64 {
    let slots = (window.as_millis() / SEND_SLOT.as_millis()).max(1) as usize;
    let mut sent = vec![0usize; slots];
    for beat in beats {
        let slot = (beat.sent.duration_since(opened).as_millis() / SEND_SLOT.as_millis()) as usize;
        if let Some(count) = sent.get_mut(slot) {
            *count += 1;
        }
    }
    let total: usize = sent.iter().sum();
    if total == 0 {
        return f64::NAN;
    }
    *sent.iter().max().unwrap_or(&0) as f64 * slots as f64 / total as f64
}

/// The raw samples of run `run`, for a closer look with `--keep`:
/// `heartbeats-<run>.csv` (sent, ms into the window and Unix ms to match
/// the coordinator's log; round trip and the coordinator's part, µs and
/// ms) and `lag-<run>.csv` (when the control timer was due, ms into the
/// window; how late it woke, µs).
fn write_samples(
    dir: &Path,
    run: usize,
    (opened, opened_wall): (Instant, std::time::SystemTime),
    beats: &[Beat],
    lags: &[(Instant, Duration)],
) -> anyhow::Result<()> {
    let at = |t: Instant| t.saturating_duration_since(opened).as_secs_f64() * 1000.0;
    let wall_ms = opened_wall
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0;
    let mut csv = String::from("sent_ms,sent_unix_ms,rtt_us,coordinator_ms\n");
    for beat in beats {
        csv += &format!(
            "{:.3},{:.0},{},{}\n",
            at(beat.sent),
            wall_ms + at(beat.sent),
            beat.rtt.as_micros(),
            beat.handled.as_millis()
        );
    }
    let path = dir.join(format!("heartbeats-{run}.csv"));
    std::fs::write(&path, csv).with_context(|| format!("writing {}", path.display()))?;
    let mut csv = String::from("due_ms,lag_us\n");
    for (due, lag) in lags {
        csv += &format!("{:.3},{}\n", at(*due), lag.as_micros());
    }
    let path = dir.join(format!("lag-{run}.csv"));
    std::fs::write(&path, csv).with_context(|| format!("writing {}", path.display()))
}
