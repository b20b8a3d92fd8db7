//! `kobo-coord provision`, `hosts trust` and `keygen`: the command line of
//! provisioning. The work is in `kobo_provisioning`; this file parses flags,
//! connects it to the coordinator (CSR signing, node check-ins, revocation,
//! the audit log) through [`ApiClient`], draws the live progress (indicatif,
//! on standard error) and prints the recap (a table, or `--json`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kobo_inventory::Host;
use kobo_provisioning::error::CoordinatorError;
use kobo_provisioning::run::normalise_arch;
use kobo_provisioning::ssh::SshOptions;
use kobo_provisioning::trust::{self, ScanTarget};
use kobo_provisioning::{
    Batch, Coordinator, HostReport, Mode, NodeCheckIn, Progress, RunConfig, RunRecord, SignedCert,
    Status,
};

use crate::cli::{ClientArgs, DataDirArg, format_time};
use kobo_client::ApiClient;

/// kobo's known_hosts in the data directory.
const KNOWN_HOSTS_FILE: &str = "known_hosts";
/// The ssh config kobo writes in the data directory.
const SSH_CONFIG_FILE: &str = "ssh_config";
/// The deploy key in the data directory.
const DEPLOY_KEY_FILE: &str = "deploy_key";
/// How often spinners redraw.
const SPINNER_TICK: Duration = Duration::from_millis(120);

/// `kobo-coord provision INVENTORY` (or `provision remove|rollback INVENTORY`).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ProvisionArgs {
    #[command(subcommand)]
    pub command: Option<ProvisionCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum ProvisionCommand {
    /// Stop the agents, revoke their certificates, delete what was installed.
    Remove(RunArgs),
    /// Put back each host's previous agent binary and settings (.prev).
    Rollback(RunArgs),
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// The inventory (YAML).
    #[arg(required = true)]
    pub inventory: Option<PathBuf>,
    /// Show the plan per host (read-only facts); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only these hosts: host names, group names, globs (`tokyo-*`), labels
    /// (`tier=gpu`), comma-separated; `!x` excludes.
    #[arg(long)]
    pub limit: Option<String>,
    /// Hosts worked on at once (within a batch).
    #[arg(long, default_value_t = 10)]
    pub parallel: usize,
    /// Roll out in batches: N hosts or N% of them at a time.
    #[arg(long, value_parser = Batch::parse)]
    pub batch: Option<Batch>,
    /// Stop the rollout once more than N hosts failed (checked between batches).
    #[arg(long)]
    pub max_fail: Option<usize>,
    /// How long a restarted agent gets to check in with its new build.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub health_timeout: Duration,
    /// SSH connect timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Trust a host key seen for the first time (default: refuse; use `hosts trust`).
    #[arg(long)]
    pub accept_new: bool,
    /// The agent binary to install, `ARCH=PATH` or `PATH` for this machine's
    /// architecture (repeatable). Default: the kobo-agent next to kobo-coord.
    #[arg(long = "agent-binary")]
    pub agent_binaries: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// Scan each host's SSH key, show its fingerprint and pin it in kobo's
    /// known_hosts on confirmation (or when it matches the inventory's `host_key`).
    Trust(TrustArgs),
}

#[derive(Debug, Args)]
pub struct TrustArgs {
    /// The inventory (YAML).
    pub inventory: PathBuf,
    /// Only these hosts: host names, group names, globs (`tokyo-*`), labels
    /// (`tier=gpu`), comma-separated; `!x` excludes.
    #[arg(long)]
    pub limit: Option<String>,
    /// Trust new keys without asking.
    #[arg(long)]
    pub yes: bool,
    /// Replace a trusted key that changed (after you checked why).
    #[arg(long)]
    pub replace: bool,
    /// SSH connect timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    #[command(flatten)]
    pub data_dir: DataDirArg,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Replace an existing deploy key.
    #[arg(long)]
    pub force: bool,
}

/// The coordinator, as provisioning needs it, over the HTTPS API.
pub(crate) struct ApiCoordinator<'a>(pub(crate) &'a ApiClient);

fn boxed(err: kobo_client::ClientError) -> CoordinatorError {
    Box::new(err)
}

impl Coordinator for ApiCoordinator<'_> {
    async fn sign_csr(&self, node_id: &str, csr_pem: &str) -> Result<SignedCert, CoordinatorError> {
        let issued = self
            .0
            .certificate_issue(node_id, csr_pem)
            .await
            .map_err(boxed)?;
        Ok(SignedCert {
            certificate_pem: issued.certificate_pem,
            ca_pem: issued.ca_pem,
        })
    }

    async fn node(&self, node_id: &str) -> Result<Option<NodeCheckIn>, CoordinatorError> {
        let nodes = self.0.nodes().await.map_err(boxed)?;
        Ok(nodes
            .into_iter()
            .find(|n| n.node_id == node_id)
            .map(|n| NodeCheckIn {
                agent_version: n.agent_version,
                active: n.status == kobo_protocol::NodeStatus::Active,
                registered_at: n.registered_at,
                last_heartbeat_at: n.last_heartbeat_at,
            }))
    }

    async fn revoke(&self, node_id: &str) -> Result<Option<u32>, CoordinatorError> {
        match self.0.node_revoke(node_id).await {
            Ok(answer) => Ok(Some(answer.certificates_revoked)),
            Err(err) if err.is_not_found() => Ok(None),
            Err(err) => Err(boxed(err)),
        }
    }

    async fn record(&self, run: &RunRecord) -> Result<(), CoordinatorError> {
        let body = kobo_protocol::ProvisionRun {
            host: run.host.clone(),
            node_id: run.node_id.clone(),
            action: run.action.clone(),
            outcome: run.outcome.clone(),
            detail: run.detail.clone(),
        };
        self.0.provision_run_record(&body).await.map_err(boxed)?;
        Ok(())
    }
}

/// One spinner per host on standard error; plain lines when that is not a terminal.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    plain: bool,
}

impl Bars {
    fn new() -> Bars {
        let plain = !std::io::stderr().is_terminal();
        Bars {
            multi: MultiProgress::with_draw_target(if plain {
                ProgressDrawTarget::hidden()
            } else {
                ProgressDrawTarget::stderr()
            }),
            bars: Mutex::new(HashMap::new()),
            plain,
        }
    }

    fn bar(&self, host: &str) -> Option<ProgressBar> {
        self.bars
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(host)
            .cloned()
    }
}

impl Progress for Bars {
    fn start(&self, host: &str) {
        let style =
            ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} {elapsed:>4} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bar = self.multi.add(ProgressBar::new_spinner().with_style(style));
        bar.set_prefix(format!("{host:<14}"));
        bar.enable_steady_tick(SPINNER_TICK);
        self.bars
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(host.to_string(), bar);
    }

    fn step(&self, host: &str, message: &str) {
        if let Some(bar) = self.bar(host) {
            bar.set_message(message.to_string());
        }
        if self.plain {
            eprintln!("{host}: {message}");
        }
    }

    fn finish(&self, report: &HostReport) {
        let action = match report.action.as_str() {
            "nothing" => String::new(),
            action => format!(" ({action})"),
        };
        let line = format!(
            "{}{action}: {}",
            report.status.as_str(),
            head(&report.detail, 100)
        );
        match self.bar(&report.host) {
            Some(bar) if report.status.is_failure() => bar.abandon_with_message(line.clone()),
            Some(bar) => bar.finish_with_message(line.clone()),
            None => {}
        }
        if self.plain {
            eprintln!("{}: {line}", report.host);
        }
    }
}

fn head(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(n).collect();
    cut.push('…');
    cut
}

/// kobo's SSH files in the data directory; writes the ssh config.
pub(crate) fn ssh_options(
    data_dir: &Path,
    accept_new: bool,
    connect_timeout: Duration,
) -> anyhow::Result<SshOptions> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    // ssh reads these paths from its config: make them absolute.
    let data_dir = &std::path::absolute(data_dir)
        .with_context(|| format!("resolving {}", data_dir.display()))?;
    let known_hosts = data_dir.join(KNOWN_HOSTS_FILE);
    let config_file = data_dir.join(SSH_CONFIG_FILE);
    let deploy_key = data_dir.join(DEPLOY_KEY_FILE);
    let default_key = deploy_key.exists().then_some(deploy_key);
    kobo_provisioning::ssh::write_ssh_config(&config_file, &known_hosts, default_key.as_deref())?;
    Ok(SshOptions {
        known_hosts,
        config_file,
        default_key,
        accept_new,
        connect_timeout,
        control_dir: std::env::temp_dir(),
    })
}

/// `--agent-binary` values by architecture; the default is the kobo-agent
/// next to this executable, for this machine's architecture.
pub(crate) fn agent_binaries(values: &[String]) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let local_arch = normalise_arch(std::env::consts::ARCH).to_string();
    let mut binaries = BTreeMap::new();
    for value in values {
        let (arch, path) = match value.split_once('=') {
            Some((arch, path)) => (normalise_arch(arch).to_string(), PathBuf::from(path)),
            None => (local_arch.clone(), PathBuf::from(value)),
        };
        if !path.is_file() {
            bail!("--agent-binary {value}: {} is not a file", path.display());
        }
        binaries.insert(arch, path);
    }
    if binaries.is_empty() {
        let next_to_us = std::env::current_exe()
            .context("locating kobo-coord")?
            .with_file_name("kobo-agent");
        if !next_to_us.is_file() {
            bail!(
                "no agent binary: {} does not exist; pass --agent-binary PATH (or ARCH=PATH)",
                next_to_us.display()
            );
        }
        binaries.insert(local_arch, next_to_us);
    }
    Ok(binaries)
}

pub(crate) fn load_inventory(path: &Path) -> anyhow::Result<kobo_inventory::Inventory> {
    // The diagnostics are the message: file:line:column for each problem.
    kobo_inventory::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

pub async fn provision(args: ProvisionArgs) -> anyhow::Result<()> {
    let (mode, run) = match args.command {
        None => (
            if args.run.dry_run {
                Mode::DryRun
            } else {
                Mode::Apply
            },
            args.run,
        ),
        Some(ProvisionCommand::Remove(run)) => (Mode::Remove, run),
        Some(ProvisionCommand::Rollback(run)) => (Mode::Rollback, run),
    };
    if run.dry_run && matches!(mode, Mode::Remove | Mode::Rollback) {
        bail!("--dry-run shows the plan of `provision`; `remove` and `rollback` have none");
    }
    let Some(inventory_path) = run.inventory.clone() else {
        bail!("the inventory file is required");
    };
    let inventory = load_inventory(&inventory_path)?;
    let hosts = kobo_inventory::select(&inventory, run.limit.as_deref())?;
    let client = run.client.client()?;
    let ca_pem = client
        .join_ca()
        .await
        .context("fetching the coordinator's CA")?;
    let config = RunConfig {
        mode,
        parallel: run.parallel.max(1),
        batch: run.batch.unwrap_or(Batch::All),
        max_fail: run.max_fail,
        health_timeout: run.health_timeout,
        binaries: agent_binaries(&run.agent_binaries)?,
        ssh: ssh_options(
            &run.client.data_dir.data_dir,
            run.accept_new,
            run.connect_timeout,
        )?,
        coordinator_url: client.coordinator_urls(),
        ca_pem,
    };
    let bars = Bars::new();
    let reports =
        kobo_provisioning::run::run(&hosts, &config, &ApiCoordinator(&client), &bars).await;
    drop(bars);
    if run.client.json {
        let out = serde_json::json!({ "mode": mode, "hosts": reports });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if mode == Mode::DryRun {
        print_plan(&reports);
    } else {
        print_recap(&reports);
    }
    let failed = reports.iter().filter(|r| r.status.is_failure()).count();
    if failed > 0 {
        bail!("{failed} of {} hosts failed", reports.len());
    }
    Ok(())
}

fn counts(reports: &[HostReport]) -> String {
    let n = |s: Status| reports.iter().filter(|r| r.status == s).count();
    let mut text = format!(
        "{} hosts: {} changed, {} ok, {} failed, {} unreachable",
        reports.len(),
        n(Status::Changed),
        n(Status::Ok),
        n(Status::Failed),
        n(Status::Unreachable)
    );
    if n(Status::Skipped) > 0 {
        text.push_str(&format!(", {} skipped", n(Status::Skipped)));
    }
    text
}

fn print_recap(reports: &[HostReport]) {
    let mut table = crate::cli::table(&["host", "node", "action", "result", "detail"]);
    for r in reports {
        table.add_row(vec![
            r.host.clone(),
            r.node_id.clone(),
            r.action.clone(),
            r.status.as_str().to_string(),
            head(&r.detail, 120),
        ]);
    }
    println!("{table}");
    println!("{}", counts(reports));
    if reports.iter().all(|r| r.status == Status::Ok) {
        println!("no changes: every host was already as the inventory says");
    }
}

fn print_plan(reports: &[HostReport]) {
    let mut table = crate::cli::table(&[
        "host",
        "node",
        "system",
        "agent",
        "cert until",
        "running",
        "plan",
        "why",
    ]);
    for r in reports {
        let facts = r.facts.as_ref();
        let system = facts.map_or("-".to_string(), |f| {
            format!(
                "{} {}{}",
                f.distro.as_deref().unwrap_or(&f.os),
                f.arch,
                if f.systemd { ", systemd" } else { "" }
            )
        });
        let agent = facts
            .and_then(|f| f.agent_sha256.as_deref())
            .map_or("-".to_string(), |sha| {
                let version = facts
                    .and_then(|f| f.agent_version.as_deref())
                    .unwrap_or("kobo-agent");
                format!("{version} ({})", &sha[..12.min(sha.len())])
            });
        let cert = facts
            .and_then(|f| f.cert.as_ref())
            .map_or("-".to_string(), |c| format_time(Some(c.not_after)));
        let running = facts
            .and_then(|f| f.running.clone())
            .unwrap_or_else(|| "no".into());
        let plan = if r.status.is_failure() {
            r.status.as_str().to_string()
        } else if r.changes.is_empty() {
            "nothing".to_string()
        } else {
            r.changes
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        table.add_row(vec![
            r.host.clone(),
            r.node_id.clone(),
            system,
            agent,
            cert,
            running,
            plan,
            head(&r.detail, 80),
        ]);
    }
    println!("{table}");
    let to_change = reports.iter().filter(|r| !r.changes.is_empty()).count();
    println!(
        "dry run: {to_change} of {} hosts would change; nothing was touched",
        reports.len()
    );
}

pub async fn hosts(command: HostsCommand) -> anyhow::Result<()> {
    let HostsCommand::Trust(args) = command;
    let inventory = load_inventory(&args.inventory)?;
    let selected = kobo_inventory::select(&inventory, args.limit.as_deref())?;
    let options = ssh_options(&args.data_dir.data_dir, false, args.connect_timeout)?;
    let mut targets: Vec<(ScanTarget, Option<&Host>)> = Vec::new();
    let mut seen = HashSet::new();
    for host in &selected {
        if let Some(jump) = ScanTarget::of_jump(host)
            && seen.insert(jump.pattern())
        {
            targets.push((jump, None));
        }
        let target = ScanTarget::of_host(host);
        if seen.insert(target.pattern()) {
            targets.push((target, Some(*host)));
        }
    }
    let mut failures = 0;
    for (target, host) in &targets {
        let pin = host.and_then(|h| h.ssh.host_key.as_deref());
        match trust_one(target, pin, &options, &args).await {
            Ok(message) => println!("{}: {message}", target.label),
            Err(err) => {
                failures += 1;
                println!("{}: NOT TRUSTED: {err:#}", target.label);
            }
        }
    }
    if failures > 0 {
        bail!("{failures} of {} hosts are not trusted", targets.len());
    }
    Ok(())
}

async fn trust_one(
    target: &ScanTarget,
    pin: Option<&str>,
    options: &SshOptions,
    args: &TrustArgs,
) -> anyhow::Result<String> {
    let pattern = target.pattern();
    let trusted = trust::trusted_keys(&options.known_hosts, &pattern)?;
    let scanned = trust::scan(target, options).await?;
    for key in &scanned {
        println!(
            "{}: {pattern} {} {}",
            target.label, key.algorithm, key.fingerprint
        );
    }
    if scanned.iter().all(|k| trusted.contains(k)) {
        return Ok("already trusted".into());
    }
    let changed = !trusted.is_empty();
    if changed && !args.replace {
        bail!(
            "the host key CHANGED: kobo trusts {} but the host presents {}; if you know why, rerun with --replace",
            trusted
                .iter()
                .map(|k| k.fingerprint.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            scanned
                .iter()
                .map(|k| k.fingerprint.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let how = match pin {
        Some(pin) if scanned.iter().any(|k| k.matches_pin(pin)) => {
            "matches the inventory's host_key"
        }
        Some(pin) => bail!("the host presents a key that is not the inventory's host_key {pin}"),
        None if args.yes => "trusted (--yes)",
        None if std::io::stdin().is_terminal() => {
            print!("trust this key for {} ({pattern})? [y/N] ", target.label);
            std::io::stdout().flush()?;
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                bail!("not confirmed");
            }
            "trusted"
        }
        None => bail!(
            "new key: confirm it interactively, pin it as host_key in the inventory, or pass --yes"
        ),
    };
    trust::add_trusted(&options.known_hosts, &scanned, changed)?;
    Ok(format!(
        "{how}; pinned in {}",
        options.known_hosts.display()
    ))
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let path = args.data_dir.data_dir.join(DEPLOY_KEY_FILE);
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let comment = format!(
        "kobo-deploy@{}",
        if host.is_empty() { "kobo" } else { &host }
    );
    let key = kobo_provisioning::keys::ensure_deploy_key(&path, &comment, args.force)?;
    println!("{}", key.public_line);
    eprintln!(
        "{} deploy key {} ({}); add the line above to ~/.ssh/authorized_keys of the login user on each host",
        if key.created {
            "created"
        } else {
            "kept the existing"
        },
        key.private_path.display(),
        key.fingerprint
    );
    Ok(())
}
