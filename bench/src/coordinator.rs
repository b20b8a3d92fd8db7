//! The coordinator under test: a real `kobo-coord serve` process (found next
//! to this binary) on its own data directory and loopback port, with the
//! admin client `init` made for it, and its resident memory.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kobo_client::{ApiClient, Endpoint};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::system::{self, Rss};

/// Longest a coordinator may take to answer after start (a debug build
/// opening a database of a million jobs included).
const START_PATIENCE: Duration = Duration::from_secs(60);
/// Longest a coordinator may take to stop after SIGTERM.
const STOP_PATIENCE: Duration = Duration::from_secs(30);
/// How often readiness is probed while starting.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// A command `kobo-coord` runs under (e.g. `valgrind --tool=callgrind`),
/// set once from `--coordinator-wrapper`.
static WRAPPER: OnceLock<Vec<String>> = OnceLock::new();

/// Runs every coordinator of this process under `wrapper` (split at spaces).
pub(crate) fn set_wrapper(wrapper: &str) {
    let _ = WRAPPER.set(wrapper.split_whitespace().map(str::to_string).collect());
}

/// A workspace binary built next to this one (same target directory).
pub(crate) fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating kobo-bench")?;
    let path = exe
        .parent()
        .context("kobo-bench has no parent directory")?
        .join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it next to kobo-bench (e.g. `cargo build --release -p kobo-bench -p kobo-coord -p kobo-agent -p kobo-fake-llm`)",
            path.display()
        );
    }
    Ok(path)
}

/// A free loopback port (bound, then released).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `kobo-coord serve` timings; `None` keeps the coordinator's default.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timings {
    pub(crate) heartbeat_ms: Option<u64>,
    pub(crate) lease_ttl_ms: Option<u64>,
    /// More `serve` flags (e.g. `--no-fair-share`).
    pub(crate) serve_args: Vec<String>,
}

/// A running `kobo-coord serve`.
pub(crate) struct Coordinator {
    pub(crate) data_dir: PathBuf,
    pub(crate) url: String,
    pub(crate) ca_pem: Vec<u8>,
    port: u16,
    timings: Timings,
    child: Option<Child>,
    starts: u32,
}

impl Coordinator {
    /// Starts a coordinator on `data_dir` (created and initialised by
    /// `serve` itself) and waits until it answers.
    pub(crate) async fn start(data_dir: &Path, timings: Timings) -> anyhow::Result<Coordinator> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let port = free_port()?;
        let mut coordinator = Coordinator {
            data_dir: data_dir.to_path_buf(),
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: Vec::new(),
            port,
            timings,
            child: None,
            starts: 0,
        };
        coordinator.spawn().await?;
        Ok(coordinator)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log_path = self
            .data_dir
            .join(format!("coordinator-{}.log", self.starts));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let wrapper = WRAPPER.get().map(Vec::as_slice).unwrap_or_default();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary("kobo-coord")?);
                command
            }
            None => Command::new(binary("kobo-coord")?),
        };
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(ms) = self.timings.heartbeat_ms {
            command.arg("--heartbeat-ms").arg(ms.to_string());
        }
        if let Some(ms) = self.timings.lease_ttl_ms {
            command.arg("--lease-ttl-ms").arg(ms.to_string());
        }
        command.args(&self.timings.serve_args);
        let child = command.spawn().context("starting kobo-coord")?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("kobo-coord exited at start ({status}):\n{log}");
            }
            if self.ready().await {
                return Ok(());
            }
            if started.elapsed() > START_PATIENCE {
                bail!(
                    "kobo-coord did not answer within {START_PATIENCE:?}; see {}",
                    log_path.display()
                );
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    async fn ready(&mut self) -> bool {
        let Ok(ca_pem) = std::fs::read(self.data_dir.join("ca.pem")) else {
            return false;
        };
        self.ca_pem = ca_pem;
        match self.admin() {
            Ok(admin) => admin.nodes().await.is_ok(),
            Err(_) => false,
        }
    }

    /// A client with the local admin key (`<data-dir>/admin.key`); each
    /// call makes its own client, with its own connection.
    pub(crate) fn admin(&self) -> anyhow::Result<ApiClient> {
        let api_key = kobo_protocol::DataDir::new(&self.data_dir)
            .local_admin_key()
            .context("the data directory has no admin.key yet")?;
        Ok(ApiClient::new(&Endpoint {
            url: self.url.clone(),
            ca_pem: Some(self.ca_pem.clone()),
            api_key: Some(api_key),
        })?)
    }

    pub(crate) fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .and_then(Child::id)
            .context("kobo-coord is not running")
    }

    /// The coordinator's resident memory, now and at its peak.
    pub(crate) fn rss(&self) -> anyhow::Result<Rss> {
        system::rss(self.pid()?)
    }

    /// SIGTERM, then waits for a clean exit.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            kill(Pid::from_raw(pid as i32), Signal::SIGTERM).context("signalling kobo-coord")?;
        }
        match tokio::time::timeout(STOP_PATIENCE, child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!("kobo-coord stopped with {status}");
                }
                Ok(())
            }
            Err(_) => {
                child.start_kill()?;
                bail!("kobo-coord did not stop within {STOP_PATIENCE:?} of SIGTERM")
            }
        }
    }

    /// SIGKILL: the coordinator dies mid-whatever, without a word; reaped.
    pub(crate) async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill().context("killing kobo-coord")?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Starts the coordinator again on the same data directory and port.
    pub(crate) async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.spawn().await
    }
}
