//! A run over the fleet: hosts in batches (`--batch`), up to `--parallel` at
//! once within a batch, the rollout stopped once more than `--max-fail` hosts
//! failed; per host connect, gather facts, plan, and apply (or dry-run,
//! remove, roll back); one [`HostReport`] per host, each audited.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use kobo_inventory::Host;
use serde::Serialize;

use crate::apply::{self, Binary, Wanted};
use crate::coordinator::{Coordinator, RunRecord};
use crate::error::ProvisionError;
use crate::facts::{self, Facts};
use crate::plan::{self, Desired, Plan};
use crate::render::{self, Layout};
use crate::ssh::{self, SshOptions};
use kobo_protocol::sha256_hex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Plan and apply.
    Apply,
    /// Plan only: facts are read, nothing is changed.
    DryRun,
    Remove,
    Rollback,
}

/// `--batch N` or `--batch N%`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    All,
    Hosts(usize),
    Percent(u8),
}

impl Batch {
    /// Parses `5` or `20%`.
    pub fn parse(text: &str) -> Result<Batch, String> {
        let expected =
            format!("expected a number of hosts (5) or a percentage (20%), got {text:?}");
        match text.strip_suffix('%') {
            Some(p) => match p.parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Batch::Percent(p)),
                _ => Err(expected),
            },
            None => match text.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Batch::Hosts(n)),
                _ => Err(expected),
            },
        }
    }

    /// Hosts per batch out of `total`.
    pub fn size(self, total: usize) -> usize {
        match self {
            Batch::All => total.max(1),
            Batch::Hosts(n) => n,
            Batch::Percent(p) => (total * p as usize).div_ceil(100).max(1),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub mode: Mode,
    pub parallel: usize,
    pub batch: Batch,
    /// Stop the rollout once more hosts than this failed (none: never).
    pub max_fail: Option<usize>,
    pub health_timeout: Duration,
    /// Agent binary per architecture (`uname -m`).
    pub binaries: BTreeMap<String, PathBuf>,
    pub ssh: SshOptions,
    /// The coordinator URL for hosts whose inventory names none.
    pub coordinator_url: String,
    /// The coordinator's CA (to tell whether a node's certificate is ours).
    pub ca_pem: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing needed doing (or, in a dry run, the plan was made).
    Ok,
    Changed,
    Failed,
    Unreachable,
    /// Not attempted: the rollout stopped first.
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Changed => "changed",
            Status::Failed => "failed",
            Status::Unreachable => "unreachable",
            Status::Skipped => "skipped",
        }
    }

    pub fn is_failure(self) -> bool {
        matches!(self, Status::Failed | Status::Unreachable)
    }
}

/// One host's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub host: String,
    pub node_id: String,
    /// install, upgrade, …, nothing, remove, rollback.
    pub action: String,
    pub status: Status,
    pub changes: Vec<plan::Change>,
    /// What was done, or why it failed.
    pub detail: String,
    pub facts: Option<Facts>,
    pub elapsed_ms: u64,
}

/// Live progress, one line per host.
pub trait Progress: Sync {
    fn start(&self, host: &str);
    fn step(&self, host: &str, message: &str);
    fn finish(&self, report: &HostReport);
}

/// Reads the binaries and their checksums once.
fn load_binaries(paths: &BTreeMap<String, PathBuf>) -> BTreeMap<String, Result<Binary, String>> {
    paths
        .iter()
        .map(|(arch, path)| {
            let binary = std::fs::read(path)
                .map(|bytes| Binary {
                    path: path.clone(),
                    sha256: sha256_hex(&bytes),
                    size: bytes.len() as u64,
                })
                .map_err(|e| format!("cannot read the agent binary {}: {e}", path.display()));
            (arch.clone(), binary)
        })
        .collect()
}

/// `uname -m` names, normalised.
pub fn normalise_arch(arch: &str) -> &str {
    match arch {
        "amd64" => "x86_64",
        "arm64" | "armv8l" => "aarch64",
        other => other,
    }
}

/// Runs `config.mode` over `hosts` and returns a report per host, in
/// inventory order.
pub async fn run<C: Coordinator, P: Progress>(
    hosts: &[&Host],
    config: &RunConfig,
    coordinator: &C,
    progress: &P,
) -> Vec<HostReport> {
    let binaries = load_binaries(&config.binaries);
    let batch_size = config.batch.size(hosts.len());
    let mut reports: Vec<HostReport> = Vec::with_capacity(hosts.len());
    for batch in hosts.chunks(batch_size) {
        let failed = reports.iter().filter(|r| r.status.is_failure()).count();
        if let Some(max_fail) = config.max_fail
            && failed > max_fail
        {
            for host in batch {
                let report = HostReport {
                    host: host.name.clone(),
                    node_id: host.node.node_id.clone(),
                    action: "nothing".into(),
                    status: Status::Skipped,
                    changes: Vec::new(),
                    detail: format!(
                        "rollout stopped: {failed} hosts failed (--max-fail {max_fail})"
                    ),
                    facts: None,
                    elapsed_ms: 0,
                };
                progress.finish(&report);
                reports.push(report);
            }
            continue;
        }
        let done: Vec<HostReport> = futures_util::stream::iter(batch.iter())
            .map(|host| one_host(host, config, &binaries, coordinator, progress))
            .buffer_unordered(config.parallel.max(1))
            .collect()
            .await;
        reports.extend(done);
    }
    let order: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    reports.sort_by_key(|r| order.iter().position(|n| *n == r.host));
    reports
}

async fn one_host<C: Coordinator, P: Progress>(
    host: &Host,
    config: &RunConfig,
    binaries: &BTreeMap<String, Result<Binary, String>>,
    coordinator: &C,
    progress: &P,
) -> HostReport {
    let started = Instant::now();
    progress.start(&host.name);
    let step = |message: &str| progress.step(&host.name, message);
    let mut report = HostReport {
        host: host.name.clone(),
        node_id: host.node.node_id.clone(),
        action: match config.mode {
            Mode::Remove => "remove",
            Mode::Rollback => "rollback",
            Mode::Apply | Mode::DryRun => "nothing",
        }
        .into(),
        status: Status::Ok,
        changes: Vec::new(),
        detail: String::new(),
        facts: None,
        elapsed_ms: 0,
    };
    let outcome = host_steps(host, config, binaries, coordinator, &step, &mut report).await;
    match outcome {
        Ok(detail) => report.detail = detail,
        Err(err) => {
            report.status = if err.is_unreachable() {
                Status::Unreachable
            } else {
                Status::Failed
            };
            report.detail = error_chain(&err);
        }
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    if config.mode != Mode::DryRun {
        let record = RunRecord {
            host: host.name.clone(),
            node_id: host.node.node_id.clone(),
            action: report.action.clone(),
            outcome: report.status.as_str().to_string(),
            detail: report.detail.chars().take(1500).collect(),
        };
        if let Err(err) = coordinator.record(&record).await {
            report.detail.push_str(&format!(" (not audited: {err})"));
        }
    }
    progress.finish(&report);
    report
}

/// The error and its causes on one line.
fn error_chain(err: &ProvisionError) -> String {
    let mut text = err.to_string();
    if matches!(err, ProvisionError::Connect { .. }) {
        // Its reason is already the last line of ssh's own message.
        return text;
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

async fn host_steps<C: Coordinator>(
    host: &Host,
    config: &RunConfig,
    binaries: &BTreeMap<String, Result<Binary, String>>,
    coordinator: &C,
    step: &(dyn Fn(&str) + Sync),
    report: &mut HostReport,
) -> Result<String, ProvisionError> {
    step("connecting");
    crate::trust::check_pin(host, &config.ssh)?;
    let remote = ssh::connect(host, &config.ssh).await?;
    let result = async {
        step("gathering facts");
        let layout = Layout::new(&host.install_dir);
        let facts = facts::gather(&remote, &layout).await?;
        report.facts = Some(facts.clone());
        match config.mode {
            Mode::Remove => {
                report.status = Status::Changed;
                return apply::remove(&remote, &facts, host, coordinator, step).await;
            }
            Mode::Apply | Mode::DryRun | Mode::Rollback => {}
        }
        let arch = normalise_arch(&facts.arch).to_string();
        let binary = match binaries.get(&arch) {
            Some(Ok(binary)) => binary,
            Some(Err(message)) => return Err(ProvisionError::Other(message.clone())),
            None => {
                return Err(ProvisionError::NoBinary {
                    host: host.name.clone(),
                    arch,
                });
            }
        };
        let api_key = match &host.node.llm.api_key {
            Some(secret) => Some(secret.resolve().map_err(|source| ProvisionError::Secret {
                host: host.name.clone(),
                secret: secret.to_string(),
                source,
            })?),
            None => None,
        };
        let coordinator_url = host
            .coordinator
            .clone()
            .unwrap_or_else(|| config.coordinator_url.clone());
        let env = render::agent_env(host, &coordinator_url, api_key.as_deref());
        let unit = facts.uses_systemd().then(|| render::systemd_unit(host));
        let desired = Desired {
            node_id: host.node.node_id.clone(),
            agent_sha256: binary.sha256.clone(),
            config_sha256: sha256_hex(env.as_bytes()),
            unit_sha256: unit.as_deref().map(|u| sha256_hex(u.as_bytes())),
            ca_sha256: sha256_hex(config.ca_pem.as_bytes()),
        };
        let wanted = Wanted {
            host,
            layout,
            binary,
            env,
            unit,
            health_timeout: config.health_timeout,
        };
        if config.mode == Mode::Rollback {
            report.status = Status::Changed;
            return apply::rollback(&remote, &facts, &wanted, coordinator, step).await;
        }
        let plan: Plan = plan::plan(&facts, &desired, SystemTime::now());
        report.action = plan.action().to_string();
        report.changes = plan.changes.clone();
        if config.mode == Mode::DryRun {
            return Ok(if plan.changes.is_empty() {
                "up to date".to_string()
            } else {
                plan.reasons.join("; ")
            });
        }
        let detail = apply::apply(&remote, &facts, &plan, &wanted, coordinator, step).await?;
        if !plan.changes.is_empty() {
            report.status = Status::Changed;
        }
        Ok(detail)
    }
    .await;
    remote.close().await;
    result
}
