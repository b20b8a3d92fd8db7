//! Figure 9, fairness: one fleet shared by two keys with deep batch
//! backlogs (weights 1 and 3) and three light keys submitting a job every
//! 100 ms each; every key's share of the slots, Jain's index over the
//! backlogged keys' weight-normalised shares, and the light keys' wait —
//! with weighted fair share on, then off (`--no-fair-share`: priority and
//! age alone, as a FIFO broker does), in one run.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use kobo_client::{ApiClient, Endpoint};
use kobo_protocol::{AccessRole, KeyPolicy};
use tokio::task::JoinSet;

use super::{Env, noop};
use crate::agents::{self, AgentSpec, Fleet, Probe};
use crate::coordinator::{Coordinator, Timings};
use crate::report::{Bound, FigureResult, Metric};
use crate::stats;

const KIND: &str = "fair";
const AGENTS: usize = 4;
const SLOTS: u32 = 4;
/// The `sim` backend's latency: every job holds a slot this long.
const LLM_LATENCY: Duration = Duration::from_millis(50);
const WINDOW: Duration = Duration::from_secs(10);
const WINDOW_QUICK: Duration = Duration::from_secs(2);
/// The backlogged keys and their weights.
const BACKLOGGED: [(&str, u32); 2] = [("backlog-w1", 1), ("backlog-w3", 3)];
/// The light keys (weight 1), each submitting one job per [`LIGHT_EVERY`].
const LIGHT: [&str; 3] = ["light-a", "light-b", "light-c"];
const LIGHT_EVERY: Duration = Duration::from_millis(100);
/// Each backlog holds this multiple of what the whole fleet runs in the
/// window, so neither runs dry.
const BACKLOG_MARGIN: f64 = 1.5;
const FILL_BATCH: usize = 1000;

/// What one mode measured.
struct Measured {
    /// Per key (backlogged, then light): slots started in the window.
    slots: Vec<(String, u64)>,
    /// The light keys' jobs: lease time − submit time (a job still queued
    /// at the window's end counts with its wait so far: a lower bound).
    light_waits: Vec<Duration>,
}

pub(crate) async fn run(env: &Env) -> anyhow::Result<FigureResult> {
    let window = env.pick(WINDOW, WINDOW_QUICK);
    let mut runs = Vec::new();
    for rep in 0..env.repeats {
        let mut run = Vec::new();
        for (mode, fair_share) in [("on", true), ("off", false)] {
            let measured = measure(env, &format!("fairness-{mode}-{rep}"), fair_share, window)
                .await
                .with_context(|| format!("fair share {mode}"))?;
            run.extend(metrics(mode, &measured));
        }
        runs.push(run);
    }
    Ok(FigureResult {
        id: "fairness",
        title: "9. Fairness between API keys",
        method: format!(
            "{AGENTS} simulated agents × {SLOTS} slots on the `sim` backend at {LLM_LATENCY:?}; keys {} each queue a backlog of {BACKLOG_MARGIN}× what the fleet runs in the window (submitted interleaved, {FILL_BATCH} per batch), while keys {} (weight 1) each submit one job every {LIGHT_EVERY:?}; over a {window:?} window, each key's share of the slots started, Jain's index of the backlogged keys' shares ÷ their weight shares (1 = exactly by weight), and the light keys' wait from submit to lease (jobs not leased by the window's end count with their wait so far). Once with weighted fair share (the default), once with `kobo-coord serve --no-fair-share` (priority and age alone), each on a fresh coordinator.",
            BACKLOGGED
                .iter()
                .map(|(k, w)| format!("{k} (weight {w})"))
                .collect::<Vec<_>>()
                .join(" and "),
            LIGHT.join(", "),
        ),
        runs,
    })
}

fn metrics(mode: &str, measured: &Measured) -> Vec<Metric> {
    let total: u64 = measured.slots.iter().map(|(_, n)| n).sum::<u64>().max(1);
    let mut out = Vec::new();
    for (key, n) in &measured.slots {
        out.push(Metric::new(
            format!("share_{key}_{mode}"),
            format!("fair share {mode}: {key}'s share of slots"),
            "%",
            *n as f64 * 100.0 / total as f64,
        ));
    }
    let weight_total: u32 = BACKLOGGED.iter().map(|(_, w)| w).sum();
    let backlog_total: u64 = measured.slots[..BACKLOGGED.len()]
        .iter()
        .map(|(_, n)| n)
        .sum::<u64>()
        .max(1);
    let normalised: Vec<f64> = BACKLOGGED
        .iter()
        .zip(&measured.slots)
        .map(|((_, w), (_, n))| {
            (*n as f64 / backlog_total as f64) / (*w as f64 / weight_total as f64)
        })
        .collect();
    let index = Metric::new(
        format!("jain_{mode}"),
        format!("fair share {mode}: Jain's index of the backlogged keys (by weight)"),
        "",
        jain(&normalised),
    );
    out.push(if mode == "on" {
        index.target(Bound::AtLeast(0.98))
    } else {
        index
    });
    let wait = stats::latency(&measured.light_waits);
    out.push(Metric::new(
        format!("light_wait_p50_ms_{mode}"),
        format!("fair share {mode}: light keys' wait p50"),
        "ms",
        wait.p50_ms,
    ));
    out.push(Metric::new(
        format!("light_wait_p99_ms_{mode}"),
        format!("fair share {mode}: light keys' wait p99"),
        "ms",
        wait.p99_ms,
    ));
    out
}

/// Jain's fairness index of `x`: (Σx)² / (n Σx²).
fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let squares: f64 = x.iter().map(|v| v * v).sum();
    if squares == 0.0 {
        return f64::NAN;
    }
    sum * sum / (x.len() as f64 * squares)
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn measure(
    env: &Env,
    name: &str,
    fair_share: bool,
    window: Duration,
) -> anyhow::Result<Measured> {
    let timings = Timings {
        serve_args: if fair_share {
            Vec::new()
        } else {
            vec!["--no-fair-share".into()]
        },
        ..Timings::default()
    };
    let mut coordinator = Coordinator::start(&env.dir(name), timings).await?;
    let admin = coordinator.admin()?;
    let mut keys = Vec::new();
    for (key, weight) in BACKLOGGED
        .iter()
        .copied()
        .chain(LIGHT.iter().map(|k| (*k, 1)))
    {
        let policy = KeyPolicy {
            weight,
            ..KeyPolicy::default()
        };
        let created = admin.apikey_create(key, AccessRole::Submit, policy).await?;
        let client = ApiClient::new(&Endpoint {
            url: coordinator.url.clone(),
            ca_pem: Some(coordinator.ca_pem.clone()),
            api_key: Some(created.key),
        })?;
        keys.push((key.to_string(), format!("apikey:{}", created.id), client));
    }
    // Both backlogs, interleaved batch by batch.
    let fleet_rate = AGENTS as f64 * SLOTS as f64 / LLM_LATENCY.as_secs_f64();
    let backlog = (fleet_rate * window.as_secs_f64() * BACKLOG_MARGIN) as usize;
    let mut left = backlog;
    while left > 0 {
        let n = left.min(FILL_BATCH);
        for (_, _, client) in &keys[..BACKLOGGED.len()] {
            client.submit_batch(vec![noop(KIND); n]).await?;
        }
        left -= n;
    }
    let nodes = agents::enroll(
        &coordinator,
        "fair",
        AGENTS,
        &env.dir(&format!("{name}-agents")),
    )
    .await?;
    let spec = AgentSpec {
        kind: KIND.into(),
        max_workers: SLOTS,
        max_jobs_per_lease: SLOTS,
        llm_latency: LLM_LATENCY,
        long_poll_ms: kobo_queue::config::DEFAULT_LONG_POLL.as_millis() as u64,
        stagger: Duration::ZERO,
    };
    let fleet = Fleet::run(
        agents::connect(&coordinator, &nodes, &spec).await?,
        &spec,
        Arc::new(Probe::default()),
    )?;
    let opened = unix_ms();
    let mut light = JoinSet::new();
    for (_, _, client) in &keys[BACKLOGGED.len()..] {
        let client = client.clone();
        light.spawn(async move {
            let mut ticks = tokio::time::interval(LIGHT_EVERY);
            let ends = tokio::time::Instant::now() + window;
            while ticks.tick().await < ends {
                client.submit(&noop(KIND)).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = light.join_next().await {
        done??;
    }
    let closed = unix_ms();
    let probe = fleet.stop().await;
    super::check_agents(&probe, "fairness")?;
    coordinator.stop().await?;
    let db = kobo_protocol::DataDir::new(&coordinator.data_dir).database();
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut slots = Vec::new();
    for (key, actor, _) in &keys {
        let n: u64 = conn.query_row(
            "SELECT count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE j.submitted_by = ?1 AND a.started_at BETWEEN ?2 AND ?3",
            rusqlite::params![actor, opened, closed],
            |r| r.get(0),
        )?;
        slots.push((key.clone(), n));
    }
    let mut light_waits = Vec::new();
    for (_, actor, _) in &keys[BACKLOGGED.len()..] {
        let mut stmt = conn.prepare(
            "SELECT coalesce(min(a.started_at), ?2) - j.created_at FROM jobs j LEFT JOIN job_attempts a ON a.job_id = j.id WHERE j.submitted_by = ?1 GROUP BY j.id",
        )?;
        let waits = stmt.query_map(rusqlite::params![actor, closed], |r| r.get::<_, i64>(0))?;
        for wait in waits {
            light_waits.push(Duration::from_millis(wait?.max(0) as u64));
        }
    }
    Ok(Measured { slots, light_waits })
}
