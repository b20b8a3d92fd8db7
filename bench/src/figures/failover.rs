//! Figure 6, failover: a real `kobo-agent` holding jobs is SIGKILLed; the
//! time from the kill until each of its jobs is done on another real agent.
//! Nothing tells the coordinator: it learns from missed heartbeats.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use futures_util::future::try_join_all;
use kobo_protocol::JobState;

use super::{Env, noop};
use crate::coordinator::{Coordinator, Timings};
use crate::real_agent::{RealAgent, RealAgentSpec};
use crate::report::{Bound, FigureResult, Metric};
use crate::stats;

/// The coordinator's heartbeat interval (3 missed = node lost) and lease
/// lifetime for this figure.
const HEARTBEAT: Duration = Duration::from_millis(1000);
const HEARTBEAT_QUICK: Duration = Duration::from_millis(300);
const LEASE_TTL: Duration = Duration::from_millis(5000);
const LEASE_TTL_QUICK: Duration = Duration::from_millis(1500);
/// Jobs the victim holds when killed (all its slots).
const HELD: usize = 4;
/// The victim's LLM never finishes in time; the survivor's takes this long.
const VICTIM_LATENCY: Duration = Duration::from_secs(600);
const SURVIVOR_LATENCY: Duration = Duration::from_millis(200);
/// Time for the survivor to park its lease request before the kill.
const SETTLE: Duration = Duration::from_millis(300);
/// How often job states are read while waiting for the victim's leases.
const POLL: Duration = Duration::from_millis(20);
/// Longest the victim may take to lease its jobs.
const LEASE_PATIENCE: Duration = Duration::from_secs(30);
/// Heartbeats a node may miss before it is lost (the coordinator's rule).
const MISSED_HEARTBEATS: u32 = kobo_queue::config::MISSED_HEARTBEATS_LOST;
/// The target's slack on top of the missed heartbeats.
const TARGET_SLACK: Duration = Duration::from_secs(1);

pub(crate) async fn run(env: &Env) -> anyhow::Result<FigureResult> {
    let heartbeat = env.pick(HEARTBEAT, HEARTBEAT_QUICK);
    let timings = Timings {
        heartbeat_ms: Some(heartbeat.as_millis() as u64),
        lease_ttl_ms: Some(env.pick(LEASE_TTL, LEASE_TTL_QUICK).as_millis() as u64),
        ..Timings::default()
    };
    let mut coordinator = Coordinator::start(&env.dir("failover"), timings).await?;
    let admin = coordinator.admin()?;
    let agents_dir = env.dir("failover-agents");
    let bound = heartbeat * MISSED_HEARTBEATS + TARGET_SLACK;
    let mut runs = Vec::new();
    for rep in 0..env.repeats {
        let kind = format!("failover-{rep}");
        let victim_id = format!("victim-{rep}");
        let survivor_id = format!("survivor-{rep}");
        let mut victim = RealAgent::join(
            &coordinator,
            &admin,
            RealAgentSpec {
                node_id: &victim_id,
                kind: &kind,
                max_workers: HELD as u32,
                sim_latency: VICTIM_LATENCY,
                llm_endpoint: None,
            },
            &agents_dir,
        )
        .await?;
        let mut ids = Vec::new();
        for _ in 0..HELD {
            ids.push(admin.submit(&noop(&kind)).await?.id);
        }
        let waiting = Instant::now();
        loop {
            let mut held = 0;
            for &id in &ids {
                let job = admin.job(id).await?.job;
                if job.state == JobState::Leased && job.node_id.as_deref() == Some(&victim_id) {
                    held += 1;
                }
            }
            if held == HELD {
                break;
            }
            if waiting.elapsed() > LEASE_PATIENCE {
                bail!("the victim leased {held} of {HELD} jobs in {LEASE_PATIENCE:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        let mut survivor = RealAgent::join(
            &coordinator,
            &admin,
            RealAgentSpec {
                node_id: &survivor_id,
                kind: &kind,
                max_workers: HELD as u32,
                sim_latency: SURVIVOR_LATENCY,
                llm_endpoint: None,
            },
            &agents_dir,
        )
        .await?;
        tokio::time::sleep(SETTLE).await;
        let killed = Instant::now();
        victim.kill().await?;
        let times = try_join_all(ids.iter().map(|&id| {
            let (admin, survivor_id) = (admin.clone(), survivor_id.clone());
            async move {
                let job = admin.wait_terminal(id).await?;
                let took = killed.elapsed();
                ensure!(
                    job.state == JobState::Succeeded
                        && job.node_id.as_deref() == Some(survivor_id.as_str()),
                    "job {id} ended {} on {:?}, not succeeded on {survivor_id}",
                    job.state,
                    job.node_id
                );
                anyhow::Ok(took)
            }
        }))
        .await?;
        survivor.stop().await?;
        let latest = times.iter().max().copied().unwrap_or_default();
        runs.push(vec![
            Metric::new(
                "max_s",
                "last job done, after the kill",
                "s",
                latest.as_secs_f64(),
            )
            .target(Bound::AtMost(bound.as_secs_f64())),
            Metric::new(
                "p50_s",
                "median job done, after the kill",
                "s",
                stats::percentile_ms(&times, 0.5) / 1000.0,
            ),
        ]);
    }
    coordinator.stop().await?;
    Ok(FigureResult {
        id: "failover",
        title: "6. Failover",
        method: format!(
            "`kobo-coord serve --heartbeat-ms {} --lease-ttl-ms {}`; a real `kobo-agent` (`--llm sim`, {HELD} workers) holds {HELD} jobs its LLM would take {VICTIM_LATENCY:?} on; a second real agent (`--sim-latency-ms {}`) is parked; the first is SIGKILLed and each job is waited for (`GET /v1/jobs/{{id}}/wait`) until it succeeded on the second. Target: {MISSED_HEARTBEATS} heartbeat intervals + {TARGET_SLACK:?} = {bound:?} (the rerun's {SURVIVOR_LATENCY:?} of LLM time included).",
            heartbeat.as_millis(),
            env.pick(LEASE_TTL, LEASE_TTL_QUICK).as_millis(),
            SURVIVOR_LATENCY.as_millis()
        ),
        runs,
    })
}
