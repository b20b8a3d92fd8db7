//! A real `kobo-agent` process (found next to this binary), enrolled with
//! `kobo-agent join` and a token from the admin API, on the `sim` backend;
//! for the figures that kill one or weigh one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kobo_client::ApiClient;
use kobo_protocol::NodeStatus;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::coordinator::{Coordinator, binary};
use crate::system::{self, Rss};

/// Longest an agent may take to enroll and register.
const REGISTER_PATIENCE: Duration = Duration::from_secs(30);
/// Longest an agent may take to exit after SIGTERM.
const STOP_PATIENCE: Duration = Duration::from_secs(15);
/// How often the node list is read while waiting for a registration.
const POLL: Duration = Duration::from_millis(20);
/// Lifetime of the join token made for the agent.
const TOKEN_TTL: Duration = Duration::from_secs(600);

/// What the agent runs with.
pub(crate) struct RealAgentSpec<'a> {
    pub(crate) node_id: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) max_workers: u32,
    pub(crate) sim_latency: Duration,
    /// Run on the `ollama` backend against this base URL instead of `sim`.
    pub(crate) llm_endpoint: Option<&'a str>,
}

pub(crate) struct RealAgent {
    child: Option<Child>,
    pub(crate) log: PathBuf,
}

impl RealAgent {
    /// Creates a join token, starts `kobo-agent join` and waits until the
    /// node is registered and active.
    pub(crate) async fn join(
        coordinator: &Coordinator,
        admin: &ApiClient,
        spec: RealAgentSpec<'_>,
        dir: &Path,
    ) -> anyhow::Result<RealAgent> {
        let token = admin.token_create(spec.node_id, TOKEN_TTL).await?.token;
        let state_dir = dir.join(spec.node_id);
        std::fs::create_dir_all(&state_dir)?;
        let log = dir.join(format!("{}.log", spec.node_id));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(binary("kobo-agent")?);
        command
            .arg("join")
            .arg(&coordinator.url)
            .args(["--node-id", spec.node_id])
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--region", "ap-northeast-1", "--capabilities", spec.kind])
            .arg("--max-workers")
            .arg(spec.max_workers.to_string())
            .env("KOBO_JOIN_TOKEN", token)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true);
        match spec.llm_endpoint {
            Some(endpoint) => command.args(["--llm", "ollama", "--llm-endpoint", endpoint]),
            None => command
                .args(["--llm", "sim", "--sim-latency-ms"])
                .arg(spec.sim_latency.as_millis().to_string()),
        };
        let child = command.spawn().context("starting kobo-agent")?;
        let mut agent = RealAgent {
            child: Some(child),
            log,
        };
        let started = Instant::now();
        loop {
            let active = admin
                .nodes()
                .await?
                .iter()
                .any(|n| n.node_id == spec.node_id && n.status == NodeStatus::Active);
            if active {
                return Ok(agent);
            }
            if let Some(child) = agent.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "kobo-agent {} exited ({status}):\n{}",
                    spec.node_id,
                    std::fs::read_to_string(&agent.log).unwrap_or_default()
                );
            }
            if started.elapsed() > REGISTER_PATIENCE {
                bail!(
                    "kobo-agent {} did not register within {REGISTER_PATIENCE:?}; see {}",
                    spec.node_id,
                    agent.log.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn pid(&self) -> anyhow::Result<Pid> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .context("kobo-agent is not running")?;
        Ok(Pid::from_raw(pid as i32))
    }

    pub(crate) fn rss(&self) -> anyhow::Result<Rss> {
        system::rss(self.pid()?.as_raw() as u32)
    }

    /// SIGKILL: the agent vanishes without a word.
    pub(crate) async fn kill(&mut self) -> anyhow::Result<()> {
        kill(self.pid()?, Signal::SIGKILL).context("killing kobo-agent")?;
        if let Some(mut child) = self.child.take() {
            child.wait().await?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for the drain to end.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            kill(Pid::from_raw(pid as i32), Signal::SIGTERM).context("signalling kobo-agent")?;
        }
        if tokio::time::timeout(STOP_PATIENCE, child.wait())
            .await
            .is_err()
        {
            child.start_kill()?;
            bail!("kobo-agent did not stop within {STOP_PATIENCE:?} of SIGTERM");
        }
        Ok(())
    }
}
