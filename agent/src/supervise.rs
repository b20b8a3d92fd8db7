//! `kobo-agent supervise`: runs the agent with the settings of an environment
//! file, without a shell. Provisioning writes the file (`KOBO_NODE_ID=…`, one
//! `KEY=value` a line, taken literally) and starts the supervisor: under
//! systemd in the foreground (`--no-restart`, systemd restarts), elsewhere
//! detached with a pid file, restarting the agent with a backoff when it
//! exits. SIGTERM is passed on to the agent, which drains; then the
//! supervisor exits and removes its pid file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Command;

/// First wait before restarting an agent that exited; doubles per quick exit.
const RESTART_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between restarts.
const RESTART_CAP: Duration = Duration::from_secs(30);
/// An agent that ran this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How long `--detach` waits for the detached supervisor to write its pid file.
const DETACH_WAIT: Duration = Duration::from_secs(10);
/// Largest environment file read.
const MAX_ENV_FILE: u64 = 64 << 10;

#[derive(Debug, Clone)]
pub struct SuperviseConfig {
    pub env_file: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    /// Exit when the agent exits (with its status) instead of restarting it.
    pub no_restart: bool,
}

/// Reads `KEY=value` lines; `#` comments and blank lines are skipped. Values
/// are taken literally: no quotes, no `$` expansion, nothing a shell would do.
pub fn read_env_file(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > MAX_ENV_FILE {
        bail!("{} is larger than {MAX_ENV_FILE} bytes", path.display());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_env(&text).with_context(|| format!("in {}", path.display()))
}

pub fn parse_env(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!("line {}: expected KEY=value", idx + 1);
        };
        let valid_key = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
            && key
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !valid_key {
            bail!("line {}: {key:?} is not a variable name", idx + 1);
        }
        vars.insert(key.to_string(), value.to_string());
    }
    Ok(vars)
}

/// Starts a supervisor in its own session, detached from the caller (an SSH
/// command returns at once), and waits until it wrote its pid file.
pub async fn detach(config: &SuperviseConfig) -> anyhow::Result<u32> {
    let Some(pid_file) = &config.pid_file else {
        bail!("--detach needs --pid-file");
    };
    // Fail here, visibly, rather than in the background.
    read_env_file(&config.env_file)?;
    let _ = std::fs::remove_file(pid_file);
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut command = Command::new(exe);
    command
        .arg("supervise")
        .arg("--session")
        .arg("--env-file")
        .arg(&config.env_file)
        .arg("--pid-file")
        .arg(pid_file);
    if config.no_restart {
        command.arg("--no-restart");
    }
    let log = match &config.log_file {
        Some(path) => {
            command.arg("--log-file").arg(path);
            Some(open_log(path)?)
        }
        None => None,
    };
    command.stdin(Stdio::null());
    match log {
        Some(file) => {
            command.stdout(file.try_clone()?).stderr(file);
        }
        None => {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let mut child = command.spawn().context("starting the supervisor")?;
    let pid = child.id().context("the supervisor has no pid")?;
    let deadline = Instant::now() + DETACH_WAIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(pid_file)
            && text.trim() == pid.to_string()
        {
            return Ok(pid);
        }
        if let Some(status) = child.try_wait()? {
            bail!("the supervisor exited at once ({status})");
        }
        if Instant::now() > deadline {
            bail!("the supervisor wrote no pid file within {DETACH_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn open_log(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Leaves the caller's session (a detached supervisor outlives the SSH
/// connection that started it).
pub fn new_session() {
    let _ = nix::unistd::setsid();
}

/// Runs the agent under supervision until SIGTERM/SIGINT (exit 0) or, with
/// `no_restart`, until the agent exits (its status).
pub async fn run(config: SuperviseConfig) -> anyhow::Result<i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let env = read_env_file(&config.env_file)?;
    let agent = std::env::current_exe().context("locating this executable")?;
    if let Some(pid_file) = &config.pid_file {
        crate::identity::write_file(pid_file, std::process::id().to_string().as_bytes(), false)?;
    }
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut delay = RESTART_FIRST;
    let code = loop {
        let started = Instant::now();
        let mut child = Command::new(&agent)
            .envs(&env)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", agent.display()))?;
        tracing::info!(pid = child.id(), "agent started");
        let stop = tokio::select! {
            status = child.wait() => {
                let status = status.context("waiting for the agent")?;
                let code = status.code().unwrap_or(1);
                if config.no_restart {
                    break code;
                }
                if started.elapsed() > HEALTHY_RUN {
                    delay = RESTART_FIRST;
                }
                tracing::warn!(%status, restart_in = ?delay, "agent exited; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = term.recv() => break 0,
                    _ = int.recv() => break 0,
                }
                delay = (delay * 2).min(RESTART_CAP);
                false
            }
            _ = term.recv() => true,
            _ = int.recv() => true,
        };
        if stop {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let status = child.wait().await.context("waiting for the agent")?;
            tracing::info!(%status, "agent stopped");
            break 0;
        }
    };
    if let Some(pid_file) = &config.pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::parse_env;

    #[test]
    fn env_files_are_taken_literally() {
        let vars =
            parse_env("# comment\nKOBO_NODE_ID=tokyo-01\n\nKOBO_SPEC=a $(b) \"c\"=d\n").unwrap();
        assert_eq!(vars["KOBO_NODE_ID"], "tokyo-01");
        assert_eq!(vars["KOBO_SPEC"], "a $(b) \"c\"=d");
        assert!(parse_env("no equals sign\n").is_err());
        assert!(parse_env("lower=1\n").is_err());
    }
}
