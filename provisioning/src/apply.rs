//! Carrying out a plan on one host, and the other per-host verbs (rollback,
//! remove). The binary is streamed and its sha256 checked before it replaces
//! the installed one by a rename, which keeps the old one as `.prev`; the
//! node key is made on the node (`kobo-agent keygen`) and only its CSR
//! travels; only what changed is restarted. After a restart the health gate
//! waits for the node to check in with the new build; if it does not, the
//! previous binary and settings come back and are started again.

use std::time::{Duration, Instant};

use kobo_inventory::Host;

use crate::coordinator::{Coordinator, NodeCheckIn};
use crate::error::ProvisionError;
use crate::facts::Facts;
use crate::plan::{Change, Plan};
use crate::render::{Layout, UNIT_PATH};
use crate::service;
use crate::ssh::{Remote, Upload};

/// How often the health gate asks the coordinator.
const GATE_POLL: Duration = Duration::from_millis(250);
/// Hex digits of the binary's sha256 in the agent's `agent_version`.
const BUILD_ID_HEX: usize = 12;

/// `$1` dir, `$2` state dir, …: the install directory's folders.
const MKDIRS_SCRIPT: &str = r#"umask 022
mkdir -p -- "$1" "$1/bin" "$1/etc" "$1/run" "$1/log" && mkdir -p -m 0700 -- "$2" && chmod 0700 -- "$2" "$1/etc"
"#;

/// `$1` binary, `$2` previous, `$3` upload: the new binary in place by a
/// rename; the old one stays as `$2` (a hard link, so `$1` never disappears).
const INSTALL_BINARY_SCRIPT: &str = r#"if [ -f "$1" ]; then ln -f -- "$1" "$2"; fi
mv -f -- "$3" "$1"
"#;

/// `$1` file, `$2` previous: keep the current file as `$2` before it is rewritten.
const KEEP_PREVIOUS_SCRIPT: &str = r#"if [ -f "$1" ]; then cp -p -- "$1" "$2"; fi"#;

/// `$1` file, `$2` previous: swap them (a second swap undoes the first).
const SWAP_SCRIPT: &str = r#"[ -f "$2" ] || exit 0
mv -f -- "$1" "$1.swap" && mv -f -- "$2" "$1" && mv -f -- "$1.swap" "$2"
"#;

/// `$1` file, `$2` previous: put the previous file back.
const RESTORE_SCRIPT: &str = r#"if [ -f "$2" ]; then mv -f -- "$2" "$1"; fi"#;

/// `$1` dir: remove what provisioning put there (and the dir, if then empty).
const REMOVE_SCRIPT: &str = r#"rm -rf -- "$1/bin" "$1/etc" "$1/state" "$1/run" "$1/log"
rmdir -- "$1" 2>/dev/null
exit 0
"#;

/// The binary for a host's architecture.
#[derive(Debug, Clone)]
pub struct Binary {
    pub path: std::path::PathBuf,
    pub sha256: String,
    pub size: u64,
}

impl Binary {
    /// What the agent reports after `+` in its `agent_version`.
    pub fn build_id(&self) -> &str {
        build_id(&self.sha256)
    }
}

fn build_id(sha256: &str) -> &str {
    sha256.get(..BUILD_ID_HEX).unwrap_or(sha256)
}

/// Everything wanted on one host.
pub struct Wanted<'a> {
    pub host: &'a Host,
    pub layout: Layout,
    pub binary: &'a Binary,
    pub env: String,
    /// The systemd unit, when the agent runs under systemd.
    pub unit: Option<String>,
    pub health_timeout: Duration,
}

/// Reports what is happening on a host (the progress bar's message).
pub type Step<'a> = &'a (dyn Fn(&str) + Sync);

fn coordinator_error(
    host: &Host,
    what: &str,
) -> impl FnOnce(crate::error::CoordinatorError) -> ProvisionError {
    let host = host.name.clone();
    let what = what.to_string();
    move |source| ProvisionError::Coordinator { host, what, source }
}

/// Carries out `plan`; returns a one-line summary of what was done.
pub async fn apply<C: Coordinator>(
    remote: &Remote,
    facts: &Facts,
    plan: &Plan,
    wanted: &Wanted<'_>,
    coordinator: &C,
    step: Step<'_>,
) -> Result<String, ProvisionError> {
    if plan.changes.is_empty() {
        return Ok("up to date, nothing changed".into());
    }
    let host = wanted.host;
    let layout = &wanted.layout;
    let systemd = wanted.unit.is_some();
    remote
        .script_ok(
            "creating directories",
            MKDIRS_SCRIPT,
            &[&layout.dir, &layout.state_dir],
        )
        .await?;
    let new_binary = plan.has(Change::Install) || plan.has(Change::Upgrade);
    if new_binary {
        step(&format!(
            "uploading the agent ({:.1} MB)",
            wanted.binary.size as f64 / 1e6
        ));
        remote
            .upload(
                Upload::File(&wanted.binary.path),
                &layout.upload,
                "0755",
                &wanted.binary.sha256,
            )
            .await?;
    }
    if plan.has(Change::Install) || plan.has(Change::RenewCert) {
        step("certificate: key on the node, CSR signed by the coordinator");
        let keygen_binary = if new_binary {
            &layout.upload
        } else {
            &layout.binary
        };
        certificate(remote, host, layout, keygen_binary, coordinator).await?;
    }
    let reconfigure = plan.has(Change::Install) || plan.has(Change::Reconfigure);
    if reconfigure {
        step("writing the agent's settings");
        write_settings(remote, wanted).await?;
    }
    if new_binary {
        remote
            .script_ok(
                "installing the binary",
                INSTALL_BINARY_SCRIPT,
                &[&layout.binary, &layout.previous, &layout.upload],
            )
            .await?;
    }
    step("restarting the agent");
    let before = registered_at(coordinator, host).await?;
    service::stop(remote, layout, systemd).await?;
    let started = match service::start(remote, layout, systemd, reconfigure).await {
        Ok(()) => {
            step(&format!(
                "waiting for {} to check in with build {}",
                host.node.node_id,
                wanted.binary.build_id()
            ));
            gate(
                coordinator,
                &host.node.node_id,
                wanted.binary.build_id(),
                before,
                wanted.health_timeout,
            )
            .await
            .map(|_| ())
        }
        Err(err) => Err(format!("the agent did not start: {err}")),
    };
    match started {
        Ok(()) => Ok(summary(plan)),
        Err(why) => {
            step("health gate failed: rolling back");
            let rolled =
                roll_back_failed(remote, facts, wanted, coordinator, new_binary, reconfigure).await;
            Err(ProvisionError::Other(format!("{why}; {rolled}")))
        }
    }
}

fn summary(plan: &Plan) -> String {
    plan.reasons.join("; ")
}

/// The node key (made on the node if missing) and a certificate for it.
async fn certificate<C: Coordinator>(
    remote: &Remote,
    host: &Host,
    layout: &Layout,
    binary: &str,
    coordinator: &C,
) -> Result<(), ProvisionError> {
    let csr = remote
        .run_ok(
            "kobo-agent keygen",
            &[
                binary,
                "keygen",
                "--node-id",
                &host.node.node_id,
                "--state-dir",
                &layout.state_dir,
            ],
        )
        .await?;
    let signed = coordinator
        .sign_csr(&host.node.node_id, &csr)
        .await
        .map_err(coordinator_error(host, "signing the node certificate"))?;
    let bytes = signed.ca_pem.as_bytes();
    remote
        .upload(
            Upload::Bytes(bytes),
            &layout.ca,
            "0644",
            &kobo_protocol::sha256_hex(bytes),
        )
        .await?;
    let bytes = signed.certificate_pem.as_bytes();
    remote
        .upload(
            Upload::Bytes(bytes),
            &layout.cert,
            "0644",
            &kobo_protocol::sha256_hex(bytes),
        )
        .await
}

async fn write_settings(remote: &Remote, wanted: &Wanted<'_>) -> Result<(), ProvisionError> {
    let layout = &wanted.layout;
    remote
        .script_ok(
            "keeping the previous settings",
            KEEP_PREVIOUS_SCRIPT,
            &[&layout.env_file, &layout.env_previous],
        )
        .await?;
    let bytes = wanted.env.as_bytes();
    remote
        .upload(
            Upload::Bytes(bytes),
            &layout.env_file,
            "0600",
            &kobo_protocol::sha256_hex(bytes),
        )
        .await?;
    if let Some(unit) = &wanted.unit {
        let bytes = unit.as_bytes();
        remote
            .upload(
                Upload::Bytes(bytes),
                UNIT_PATH,
                "0644",
                &kobo_protocol::sha256_hex(bytes),
            )
            .await?;
    }
    Ok(())
}

async fn registered_at<C: Coordinator>(
    coordinator: &C,
    host: &Host,
) -> Result<Option<i64>, ProvisionError> {
    Ok(coordinator
        .node(&host.node.node_id)
        .await
        .map_err(coordinator_error(host, "reading the node"))?
        .map(|n| n.registered_at))
}

/// Waits until the node registered anew (after `before`) with `build_id`, is
/// active and heartbeated since. Errs with what was seen last.
pub async fn gate<C: Coordinator>(
    coordinator: &C,
    node_id: &str,
    build_id: &str,
    before: Option<i64>,
    timeout: Duration,
) -> Result<NodeCheckIn, String> {
    let deadline = Instant::now() + timeout;
    let suffix = format!("+{build_id}");
    let mut last = String::from("never registered");
    loop {
        match coordinator.node(node_id).await {
            Ok(Some(node)) => {
                let fresh = before.is_none_or(|b| node.registered_at > b);
                if fresh
                    && node.agent_version.ends_with(&suffix)
                    && node.active
                    && node.last_heartbeat_at > node.registered_at
                {
                    return Ok(node);
                }
                last = if fresh {
                    format!(
                        "registered with {} ({})",
                        node.agent_version,
                        if node.active { "active" } else { "not active" }
                    )
                } else {
                    format!("no new registration (last one runs {})", node.agent_version)
                };
            }
            Ok(None) => {}
            Err(err) => last = format!("coordinator: {err}"),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "node {node_id} did not check in with build {build_id} within {}s: {last}",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(GATE_POLL).await;
    }
}

/// After a failed gate: the previous binary and settings back, started, and
/// gated again. Returns what happened, for the error message.
async fn roll_back_failed<C: Coordinator>(
    remote: &Remote,
    facts: &Facts,
    wanted: &Wanted<'_>,
    coordinator: &C,
    new_binary: bool,
    reconfigured: bool,
) -> String {
    let layout = &wanted.layout;
    let host = wanted.host;
    let systemd = wanted.unit.is_some();
    let Some(previous_sha) = facts.agent_sha256.as_deref() else {
        let _ = service::stop(remote, layout, systemd).await;
        return "nothing to roll back to (first install): agent stopped".into();
    };
    let restore = async {
        service::stop(remote, layout, systemd).await?;
        if new_binary {
            remote
                .script_ok(
                    "restoring the previous binary",
                    RESTORE_SCRIPT,
                    &[&layout.binary, &layout.previous],
                )
                .await?;
        }
        if reconfigured {
            remote
                .script_ok(
                    "restoring the previous settings",
                    RESTORE_SCRIPT,
                    &[&layout.env_file, &layout.env_previous],
                )
                .await?;
        }
        let before = registered_at(coordinator, host).await?;
        service::start(remote, layout, systemd, false).await?;
        Ok::<_, ProvisionError>(before)
    };
    let before = match restore.await {
        Ok(before) => before,
        Err(err) => return format!("rollback failed: {err}"),
    };
    let previous = build_id(previous_sha);
    match gate(
        coordinator,
        &host.node.node_id,
        previous,
        before,
        wanted.health_timeout,
    )
    .await
    {
        Ok(_) => format!("rolled back to build {previous}, which checked in again"),
        Err(why) => format!("rolled back to build {previous}, but {why}"),
    }
}

/// `provision rollback`: swaps the binary (and settings) with the previous
/// ones, restarts, and gates on the previous build.
pub async fn rollback<C: Coordinator>(
    remote: &Remote,
    facts: &Facts,
    wanted: &Wanted<'_>,
    coordinator: &C,
    step: Step<'_>,
) -> Result<String, ProvisionError> {
    let layout = &wanted.layout;
    let host = wanted.host;
    let systemd = facts.uses_systemd();
    let Some(previous) = facts.prev_sha256.clone() else {
        return Err(ProvisionError::Other(format!(
            "no previous binary ({}) to roll back to",
            layout.previous
        )));
    };
    step("swapping in the previous binary and settings");
    remote
        .script_ok(
            "swapping binaries",
            SWAP_SCRIPT,
            &[&layout.binary, &layout.previous],
        )
        .await?;
    if facts.config_prev {
        remote
            .script_ok(
                "swapping settings",
                SWAP_SCRIPT,
                &[&layout.env_file, &layout.env_previous],
            )
            .await?;
    }
    let before = registered_at(coordinator, host).await?;
    step("restarting the agent");
    service::stop(remote, layout, systemd).await?;
    service::start(remote, layout, systemd, false).await?;
    step("waiting for the previous build to check in");
    gate(
        coordinator,
        &host.node.node_id,
        build_id(&previous),
        before,
        wanted.health_timeout,
    )
    .await
    .map_err(ProvisionError::Other)?;
    Ok(format!(
        "rolled back to build {} (the replaced build {} is kept as .prev)",
        build_id(&previous),
        facts.agent_sha256.as_deref().map(build_id).unwrap_or("-")
    ))
}

/// `provision remove`: stops the agent, revokes the node's certificates,
/// deletes what provisioning installed.
pub async fn remove<C: Coordinator>(
    remote: &Remote,
    facts: &Facts,
    host: &Host,
    coordinator: &C,
    step: Step<'_>,
) -> Result<String, ProvisionError> {
    let layout = Layout::new(&host.install_dir);
    step("stopping the agent");
    service::uninstall(remote, &layout, facts.uses_systemd()).await?;
    step("revoking the node's certificates");
    let revoked = coordinator
        .revoke(&host.node.node_id)
        .await
        .map_err(coordinator_error(host, "revoking the node"))?;
    step("deleting the install directory");
    remote
        .script_ok("removing files", REMOVE_SCRIPT, &[&layout.dir])
        .await?;
    Ok(match revoked {
        Some(n) => format!(
            "agent stopped, {n} certificates revoked, {} removed",
            layout.dir
        ),
        None => format!(
            "agent stopped (node never enrolled), {} removed",
            layout.dir
        ),
    })
}
