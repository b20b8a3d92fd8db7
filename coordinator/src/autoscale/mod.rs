//! `kobo-coord autoscale INVENTORY` (and `serve --autoscale INVENTORY`):
//! the inventory's pools of standby capacity started and stopped as their
//! backlog needs. Each tick reads the state (each pool's backlog through
//! `GET /v1/scaling`, the nodes of its hosts), asks the pure
//! [`decide::decide`] what to do, and applies it: an SSH pool's host gets
//! its agent installed and started by provisioning, a command pool runs its
//! `start` script; a stop drains the node first (`POST
//! /v1/admin/nodes/{id}/drain`), waits for its leases to end, then stops the
//! agent (SSH) or runs the `stop` script. Every action, and every failure,
//! is an audit row (`provision.scale-up`, `provision.scale-down`).
//!
//! # Layout
//! - [`decide`]: the policy (pure) and the [`decide::Book`] the loop keeps.
//! - `apply.rs`: carrying out a start or a stop.

pub mod decide;

mod apply;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use kobo_client::ApiClient;
use kobo_inventory::{Inventory, Pool, PoolProvider};
use kobo_protocol::{NodeStatus, ScalingQuery};
use tokio_util::sync::CancellationToken;

use crate::cli::ClientArgs;
use decide::{Action, Book, PoolConfig, Seen, Verb};

/// `kobo-coord autoscale INVENTORY`.
#[derive(Debug, Args, Clone)]
pub struct AutoscaleArgs {
    /// The inventory (YAML) with its `pools:`.
    pub inventory: PathBuf,
    #[command(flatten)]
    pub options: AutoscaleOptions,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// How the loop runs; shared by `autoscale` and `serve --autoscale`.
#[derive(Debug, Args, Clone)]
pub struct AutoscaleOptions {
    /// Print each decision with its reason; start and stop nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Time between looks at the backlog.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Decide (and act) once, then exit.
    #[arg(long)]
    pub once: bool,
    /// How long a started agent gets to check in (provisioning's health gate).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub health_timeout: Duration,
    /// How long a drained node's running jobs get to finish before it is stopped anyway.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// SSH connect timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// The agent binary to install on standby hosts, `ARCH=PATH` or `PATH`
    /// (repeatable). Default: the kobo-agent next to kobo-coord.
    #[arg(long = "agent-binary")]
    pub agent_binaries: Vec<String>,
}

impl Default for AutoscaleOptions {
    fn default() -> AutoscaleOptions {
        AutoscaleOptions {
            dry_run: false,
            interval: Duration::from_secs(10),
            once: false,
            health_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            agent_binaries: Vec::new(),
        }
    }
}

/// `serve --autoscale`: the loop as a client of the server beside it, with
/// the data directory's admin key; retried each interval until the server
/// answers (it starts at the same time).
pub async fn run_beside_server(
    inventory: PathBuf,
    options: AutoscaleOptions,
    data_dir: PathBuf,
    shutdown: CancellationToken,
) {
    loop {
        let attempt = async {
            let endpoint = kobo_client::Endpoint::resolve(&data_dir, None, None, None)?;
            let client = ApiClient::new(&endpoint)?;
            run(&inventory, &options, &client, &data_dir, shutdown.clone()).await
        };
        match attempt.await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "the autoscaler stopped; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(options.interval) => {}
        }
    }
}

/// One pool as the loop works it: the inventory's pool, its members and
/// the node id each member runs as.
struct PoolPlan {
    pool: Pool,
    config: PoolConfig,
    /// (member name, node id).
    members: Vec<(String, String)>,
}

fn plans(inventory: &Inventory) -> anyhow::Result<Vec<PoolPlan>> {
    let mut out = Vec::new();
    for pool in &inventory.pools {
        let members: Vec<(String, String)> = match &pool.provider {
            PoolProvider::Hosts(hosts) => hosts
                .iter()
                .map(|name| {
                    let host = inventory
                        .host(name)
                        .with_context(|| format!("pool {}: no host {name}", pool.name))?;
                    Ok((name.clone(), host.node.node_id.clone()))
                })
                .collect::<anyhow::Result<_>>()?,
            PoolProvider::Command { .. } => {
                pool.members().into_iter().map(|m| (m.clone(), m)).collect()
            }
        };
        let slots = match (pool.slots, &pool.provider) {
            (Some(slots), _) => f64::from(slots),
            (None, PoolProvider::Hosts(hosts)) => {
                let workers: Vec<u32> = hosts
                    .iter()
                    .filter_map(|h| inventory.host(h).map(|h| h.node.max_workers))
                    .collect();
                kobo_protocol::scaling::slots_per_agent(None, &workers)
            }
            (None, PoolProvider::Command { .. }) => f64::from(kobo_inventory::DEFAULT_MAX_WORKERS),
        };
        out.push(PoolPlan {
            config: PoolConfig {
                name: pool.name.clone(),
                min: pool.min,
                max: pool.max,
                slots,
                idle_after_ms: pool.idle_after.as_millis() as u64,
                cooldown_ms: pool.cooldown.as_millis() as u64,
            },
            pool: pool.clone(),
            members,
        });
    }
    Ok(out)
}

/// `kobo-coord autoscale`.
pub async fn autoscale(args: AutoscaleArgs) -> anyhow::Result<()> {
    let client = args.client.client()?;
    let shutdown = CancellationToken::new();
    kobo_agent::signals::cancel_on_signal(shutdown.clone());
    run(
        &args.inventory,
        &args.options,
        &client,
        &args.client.data_dir.data_dir,
        shutdown,
    )
    .await
}

/// The loop, until `shutdown` (or after one tick with `--once`).
pub async fn run(
    inventory_path: &std::path::Path,
    options: &AutoscaleOptions,
    client: &ApiClient,
    data_dir: &std::path::Path,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let inventory = crate::provision::load_inventory(inventory_path)?;
    if inventory.pools.is_empty() {
        bail!(
            "{} has no `pools:`; nothing to autoscale",
            inventory_path.display()
        );
    }
    let plans = plans(&inventory)?;
    let applier = apply::Applier::new(&inventory, options, client, data_dir).await?;
    let started = Instant::now();
    let mut book = Book::default();
    loop {
        let now = started.elapsed().as_millis() as u64;
        match tick(&plans, &mut book, &applier, options, client, now).await {
            Ok(()) => {}
            Err(err) if options.once => return Err(err),
            Err(err) => tracing::warn!(error = %format!("{err:#}"), "autoscale tick failed"),
        }
        if options.once {
            return Ok(());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(options.interval) => {}
        }
    }
}

async fn tick(
    plans: &[PoolPlan],
    book: &mut Book,
    applier: &apply::Applier<'_>,
    options: &AutoscaleOptions,
    client: &ApiClient,
    now: u64,
) -> anyhow::Result<()> {
    let nodes = client.nodes().await.context("reading the nodes")?;
    let mut seen = HashMap::new();
    let mut pools = Vec::new();
    for plan in plans {
        let query = ScalingQuery {
            kind: plan.pool.kind.clone(),
            region: plan.pool.region.clone(),
            model: plan.pool.model.clone(),
            slots: Some(plan.config.slots),
        };
        let scaling = client
            .scaling(&query)
            .await
            .with_context(|| format!("reading the backlog of pool {}", plan.pool.name))?;
        for (member, node_id) in &plan.members {
            let Some(node) = nodes.iter().find(|n| &n.node_id == node_id) else {
                continue;
            };
            let state = match node.status {
                NodeStatus::Active => Seen::Active {
                    leases: node.running,
                },
                NodeStatus::Draining | NodeStatus::Drained => Seen::Draining,
                NodeStatus::Lost => continue,
            };
            seen.insert(member.clone(), state);
        }
        let members = plan.members.iter().map(|(m, _)| m.clone()).collect();
        pools.push((plan.config.clone(), members, scaling.backlog));
    }
    let state = book.state(&pools, &seen, now);
    let actions = decide::decide(&state, now);
    if options.dry_run {
        for pool in &state.pools {
            let wanted = decide::desired_hosts(pool);
            let verbs: Vec<String> = actions
                .iter()
                .filter(|a| a.pool == pool.config.name)
                .map(|a| format!("{} {}", verb_word(a.verb), a.host))
                .collect();
            println!(
                "pool {}: backlog {}, {} slots/host, wants {wanted} (min {}, max {}): {}",
                pool.config.name,
                pool.backlog,
                pool.config.slots,
                pool.config.min,
                pool.config.max,
                if verbs.is_empty() {
                    "no change".to_string()
                } else {
                    verbs.join(", ")
                }
            );
        }
        for action in &actions {
            println!(
                "  would {} {} (pool {}): {}",
                verb_word(action.verb),
                action.host,
                action.pool,
                action.reason
            );
        }
        return Ok(());
    }
    let outcomes = futures_util::future::join_all(actions.iter().map(|action| {
        let plan = plans
            .iter()
            .find(|p| p.pool.name == action.pool)
            .expect("actions name the pools they came from");
        applier.apply(plan, action)
    }))
    .await;
    for (action, outcome) in actions.iter().zip(outcomes) {
        book.applied(action, outcome, now);
    }
    Ok(())
}

fn verb_word(verb: Verb) -> &'static str {
    match verb {
        Verb::Start => "start",
        Verb::Stop => "stop",
    }
}

/// The node id of `action`'s host.
fn node_of<'p>(plan: &'p PoolPlan, action: &'p Action) -> &'p str {
    plan.members
        .iter()
        .find(|(m, _)| *m == action.host)
        .map_or(action.host.as_str(), |(_, node)| node.as_str())
}
