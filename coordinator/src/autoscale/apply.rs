//! Carrying out the autoscaler's actions. Start: an SSH pool's host is
//! provisioned (installed or upgraded if needed, started, health-gated) by
//! `kobo_provisioning`; a command pool runs its `start` script. Stop: the
//! node is drained and its running jobs waited for, then the agent is
//! stopped over SSH or the `stop` script runs. Each outcome is audited.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kobo_client::ApiClient;
use kobo_inventory::{Inventory, PoolProvider};
use kobo_provisioning::{Batch, Coordinator, HostReport, Mode, Progress, RunConfig, RunRecord};

use super::decide::{Action, Verb};
use super::{AutoscaleOptions, PoolPlan, node_of};
use crate::provision::{ApiCoordinator, agent_binaries, ssh_options};

/// How often a draining node is looked at while its jobs finish.
const DRAIN_POLL: Duration = Duration::from_millis(250);
/// Longest a start or stop script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);

pub(super) struct Applier<'a> {
    inventory: &'a Inventory,
    client: &'a ApiClient,
    run: RunConfig,
    drain_timeout: Duration,
}

/// Provisioning's progress, as log lines.
struct Quiet;

impl Progress for Quiet {
    fn start(&self, _host: &str) {}
    fn step(&self, host: &str, message: &str) {
        tracing::debug!(host, message, "autoscale provisioning");
    }
    fn finish(&self, _report: &HostReport) {}
}

impl<'a> Applier<'a> {
    pub(super) async fn new(
        inventory: &'a Inventory,
        options: &AutoscaleOptions,
        client: &'a ApiClient,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Applier<'a>> {
        let has_hosts = inventory
            .pools
            .iter()
            .any(|p| matches!(p.provider, PoolProvider::Hosts(_)));
        let ca_pem = client
            .join_ca()
            .await
            .context("fetching the coordinator's CA")?;
        let binaries = if has_hosts && !options.dry_run {
            agent_binaries(&options.agent_binaries)?
        } else {
            Default::default()
        };
        let run = RunConfig {
            mode: Mode::Apply,
            parallel: 1,
            batch: Batch::All,
            max_fail: None,
            health_timeout: options.health_timeout,
            binaries,
            ssh: ssh_options(data_dir, false, options.connect_timeout)?,
            coordinator_url: client.coordinator_urls(),
            ca_pem,
        };
        Ok(Applier {
            inventory,
            client,
            run,
            drain_timeout: options.drain_timeout,
        })
    }

    /// Applies `action`; says whether it worked. Both ways it is audited.
    pub(super) async fn apply(&self, plan: &PoolPlan, action: &Action) -> bool {
        let node_id = node_of(plan, action);
        let started = Instant::now();
        let outcome = match action.verb {
            Verb::Start => self.start(plan, action, node_id).await,
            Verb::Stop => self.stop(plan, action, node_id).await,
        };
        let (ok, detail) = match &outcome {
            Ok(done) => (true, format!("{done}; {}", action.reason)),
            Err(err) => (false, format!("{err:#}; {}", action.reason)),
        };
        let (word, audit_action) = match action.verb {
            Verb::Start => ("start", "scale-up"),
            Verb::Stop => ("stop", "scale-down"),
        };
        if ok {
            tracing::info!(pool = %action.pool, host = %action.host, elapsed_ms = started.elapsed().as_millis() as u64, %detail, "autoscale {word}");
        } else {
            tracing::warn!(pool = %action.pool, host = %action.host, %detail, "autoscale {word} failed");
        }
        println!(
            "{word} {} (pool {}): {}: {detail}",
            action.host,
            action.pool,
            if ok { "ok" } else { "FAILED" }
        );
        let record = RunRecord {
            host: action.host.clone(),
            node_id: node_id.to_string(),
            action: audit_action.into(),
            outcome: if ok { "changed" } else { "failed" }.into(),
            detail: format!("pool {}: {detail}", action.pool)
                .chars()
                .take(1500)
                .collect(),
        };
        if let Err(err) = ApiCoordinator(self.client).record(&record).await {
            tracing::error!(error = %err, host = %action.host, "could not audit an autoscale action");
        }
        ok
    }

    /// The inventory's host an action names.
    fn host(&self, action: &Action) -> anyhow::Result<&'a kobo_inventory::Host> {
        self.inventory
            .host(&action.host)
            .with_context(|| format!("no host {}", action.host))
    }

    async fn start(
        &self,
        plan: &PoolPlan,
        action: &Action,
        node_id: &str,
    ) -> anyhow::Result<String> {
        match &plan.pool.provider {
            PoolProvider::Hosts(_) => {
                let host = self.host(action)?;
                // Before the health gate, which waits for an active node.
                self.resume(node_id).await?;
                let reports = kobo_provisioning::run::run(
                    &[host],
                    &self.run,
                    &ApiCoordinator(self.client),
                    &Quiet,
                )
                .await;
                let report = reports.first().context("provisioning reported nothing")?;
                if report.status.is_failure() {
                    bail!("provisioning {}: {}", report.status.as_str(), report.detail);
                }
                Ok(format!("agent {} ({})", report.action, report.detail))
            }
            PoolProvider::Command { start, .. } => {
                self.script(start, plan, action, node_id, "start").await?;
                // After the script worked, so a failed start leaves the node as it was.
                self.resume(node_id).await?;
                Ok("start script ran".into())
            }
        }
    }

    async fn stop(
        &self,
        plan: &PoolPlan,
        action: &Action,
        node_id: &str,
    ) -> anyhow::Result<String> {
        let drained = self.drain(node_id).await?;
        match &plan.pool.provider {
            PoolProvider::Hosts(_) => {
                let host = self.host(action)?;
                kobo_provisioning::trust::check_pin(host, &self.run.ssh)?;
                let remote = kobo_provisioning::ssh::connect(host, &self.run.ssh).await?;
                let layout = kobo_provisioning::render::Layout::new(&host.install_dir);
                let result = async {
                    let facts = kobo_provisioning::facts::gather(&remote, &layout).await?;
                    kobo_provisioning::service::stop(&remote, &layout, facts.uses_systemd()).await
                }
                .await;
                remote.close().await;
                result?;
                Ok(format!("{drained}; agent stopped"))
            }
            PoolProvider::Command { stop, .. } => {
                self.script(stop, plan, action, node_id, "stop").await?;
                Ok(format!("{drained}; stop script ran"))
            }
        }
    }

    /// A node we drained stays drained when its agent registers again: the
    /// drain is undone (a node the coordinator never saw needs nothing).
    async fn resume(&self, node_id: &str) -> anyhow::Result<()> {
        match self.client.resume(node_id).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_not_found() => Ok(()),
            Err(err) => Err(err).context("resuming the node"),
        }
    }

    /// Drains the node, then waits until it runs nothing (bounded by
    /// `--drain-timeout`).
    async fn drain(&self, node_id: &str) -> anyhow::Result<String> {
        match self.client.drain(node_id).await {
            Ok(_) => {}
            Err(err) if err.is_not_found() => return Ok("node unknown".into()),
            Err(err) => return Err(err).context("draining the node"),
        }
        let deadline = Instant::now() + self.drain_timeout;
        loop {
            let nodes = self.client.nodes().await.context("reading the nodes")?;
            let running = nodes
                .iter()
                .find(|n| n.node_id == node_id)
                .map_or(0, |n| n.running);
            if running == 0 {
                return Ok("drained".into());
            }
            if Instant::now() >= deadline {
                return Ok(format!(
                    "drain timed out with {running} jobs running (they are retried elsewhere)"
                ));
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Runs `script` with `sh -c`, the pool and host in its environment.
    async fn script(
        &self,
        script: &str,
        plan: &PoolPlan,
        action: &Action,
        node_id: &str,
        verb: &str,
    ) -> anyhow::Result<()> {
        let mut command = tokio::process::Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .env("KOBO_POOL", &plan.pool.name)
            .env("KOBO_HOST", &action.host)
            .env("KOBO_NODE_ID", node_id)
            .env("KOBO_ACTION", verb)
            .env("KOBO_URL", self.client.coordinator_urls())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(SCRIPT_TIMEOUT, command.output())
            .await
            .with_context(|| format!("the {verb} script ran longer than {SCRIPT_TIMEOUT:?}"))?
            .with_context(|| format!("running the {verb} script"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            bail!(
                "the {verb} script failed ({}): {}",
                output.status,
                stderr.trim().chars().take(500).collect::<String>()
            );
        }
        Ok(())
    }
}
