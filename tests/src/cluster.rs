//! A cluster of real processes for end-to-end tests: one `kobo-coord serve`
//! on a temporary data directory and loopback port, `kobo-agent`s pointed at
//! the fake LLM, and an HTTPS client. Scenarios read like prose:
//!
//! ```text
//! let mut cluster = Cluster::builder().start().await;
//! cluster.agent(AgentSpec::new("tokyo-01", &["code_generation"])).await;
//! let job = cluster.submit_prompt("code_generation", "hi").await;
//! ```

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kobo_client::{ApiClient, Endpoint};
use kobo_protocol::{JobId, JobState, JobView, SubmitJob};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::fake_llm::{self, FakeBehavior, FakeLlm};

/// Longest a test waits for the cluster to reach an expected state.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Path of a workspace binary built next to the test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`; scripts/test does)",
        path.display()
    );
    path
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Coordinator settings for a test: short timings so failover tests are quick.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    pub heartbeat_ms: u64,
    pub lease_ttl_ms: u64,
    pub retry_base_ms: u64,
    pub max_attempts: u32,
    pub long_poll_ms: u64,
    pub fake: FakeBehavior,
    /// More `kobo-coord serve` flags.
    pub serve_args: Vec<String>,
    /// The address the coordinator listens on (`0.0.0.0` for agents in
    /// network namespaces); clients still use 127.0.0.1.
    pub listen_ip: String,
    /// Put the data directory on a tmpfs of this many MiB (needs root).
    pub tmpfs_mib: Option<u64>,
    /// More environment of the coordinator process (e.g. libfaketime's).
    pub coordinator_env: Vec<(String, String)>,
    /// Serve from this data directory (a restored one, say) instead of a
    /// new temporary one; the caller keeps it.
    pub data_dir: Option<PathBuf>,
}

impl ClusterBuilder {
    pub fn heartbeat_ms(mut self, ms: u64) -> Self {
        self.heartbeat_ms = ms;
        self
    }

    pub fn lease_ttl_ms(mut self, ms: u64) -> Self {
        self.lease_ttl_ms = ms;
        self
    }

    pub fn retry_base_ms(mut self, ms: u64) -> Self {
        self.retry_base_ms = ms;
        self
    }

    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Adds a `kobo-coord serve` flag.
    pub fn serve_arg(mut self, arg: &str) -> Self {
        self.serve_args.push(arg.to_string());
        self
    }

    /// Listen on `ip` instead of 127.0.0.1 (add `--san` for the name agents use).
    pub fn listen_ip(mut self, ip: &str) -> Self {
        self.listen_ip = ip.to_string();
        self
    }

    /// Mounts a tmpfs of `mib` MiB on the data directory (a small disk to
    /// fill); fails the test unless run as root.
    pub fn tmpfs_mib(mut self, mib: u64) -> Self {
        self.tmpfs_mib = Some(mib);
        self
    }

    /// Sets `key=value` in the coordinator's environment.
    pub fn coordinator_env(mut self, key: &str, value: &str) -> Self {
        self.coordinator_env
            .push((key.to_string(), value.to_string()));
        self
    }

    /// Serves from `dir` (kept by the caller) instead of a new directory.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    pub fn fake(mut self, behavior: FakeBehavior) -> Self {
        self.fake = behavior;
        self
    }

    pub async fn start(self) -> Cluster {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::Builder::new()
            .prefix("kobo-e2e-")
            .tempdir()
            .expect("temp dir");
        if std::env::var_os("KOBO_KEEP_TEST_DIRS").is_some() {
            eprintln!("keeping test data directory {}", dir.path().display());
        }
        let (data_dir, kept) = match &self.data_dir {
            Some(given) => (given.clone(), KeptDir(None)),
            None => (dir.path().to_path_buf(), KeptDir(Some(dir))),
        };
        let mount = self.tmpfs_mib.map(|mib| Tmpfs::mount(&data_dir, mib));
        let mut this = self;
        let postgres =
            if on_postgres() && !this.serve_args.iter().any(|a| a.starts_with("--database")) {
                let pg = crate::pg::Postgres::start().await;
                this.serve_args.push(format!("--database={}", pg.url()));
                Some(pg)
            } else {
                None
            };
        let fake = fake_llm::start(this.fake.clone()).await.expect("fake llm");
        let port = free_port();
        let mut cluster = Cluster {
            _mount: mount,
            postgres,
            data_dir,
            _dir: kept,
            port,
            coordinator: None,
            coordinator_starts: 0,
            agents: Vec::new(),
            client: None,
            fake,
            settings: this,
        };
        cluster.start_coordinator().await;
        cluster
    }
}

/// A tmpfs mounted on a directory, unmounted (lazily) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Tmpfs {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts a tmpfs: run it as root (CI does)"
        );
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("run mount (Debian package mount)");
        assert!(
            status.success(),
            "mount -t tmpfs on {}: {status}",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A temporary directory, kept (for post-mortems) when
/// `KOBO_KEEP_TEST_DIRS` is set.
struct KeptDir(Option<tempfile::TempDir>);

impl Drop for KeptDir {
    fn drop(&mut self) {
        if std::env::var_os("KOBO_KEEP_TEST_DIRS").is_some()
            && let Some(dir) = self.0.take()
        {
            let _ = dir.keep();
        }
    }
}

/// What one agent process runs with.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub node_id: String,
    pub region: String,
    pub capabilities: Vec<String>,
    /// `ollama`, `openai` or `sim`.
    pub backend: String,
    pub max_workers: u32,
    pub extra_args: Vec<String>,
    /// A command the agent runs under (`ip netns exec NS`, `faketime -f
    /// +1h`), empty for none.
    pub prefix: Vec<String>,
    /// The coordinator's URL as this agent dials it (a namespace's view, a
    /// proxy); the cluster's URL when `None`.
    pub coordinator_url: Option<String>,
    /// `--drain-timeout-secs`: how long running jobs get after SIGTERM.
    pub drain_secs: u64,
}

impl AgentSpec {
    pub fn new(node_id: &str, capabilities: &[&str]) -> AgentSpec {
        AgentSpec {
            node_id: node_id.to_string(),
            region: "ap-northeast-1".to_string(),
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            backend: "ollama".to_string(),
            max_workers: 4,
            extra_args: Vec::new(),
            prefix: Vec::new(),
            coordinator_url: None,
            drain_secs: 10,
        }
    }

    /// How long running jobs get after SIGTERM (`--drain-timeout-secs`).
    pub fn drain_secs(mut self, secs: u64) -> Self {
        self.drain_secs = secs;
        self
    }

    /// Runs the agent inside network namespace `netns`, dialing the
    /// coordinator at `url` (an address reachable from there, in its SANs).
    pub fn in_netns(self, netns: &str, url: &str) -> Self {
        self.under(&["ip", "netns", "exec", netns]).via(url)
    }

    /// Runs the agent under `command` (its arguments, then the agent's).
    pub fn under(mut self, command: &[&str]) -> Self {
        self.prefix.extend(command.iter().map(|c| c.to_string()));
        self
    }

    /// Dials the coordinator at `url` (a proxy in front of it, say).
    pub fn via(mut self, url: &str) -> Self {
        self.coordinator_url = Some(url.to_string());
        self
    }

    pub fn backend(mut self, backend: &str) -> Self {
        self.backend = backend.to_string();
        self
    }

    pub fn region(mut self, region: &str) -> Self {
        self.region = region.to_string();
        self
    }

    pub fn max_workers(mut self, n: u32) -> Self {
        self.max_workers = n;
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_string());
        self
    }
}

pub struct Agent {
    pub spec: AgentSpec,
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("agent running") as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal agent");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct Cluster {
    /// Dropped first: unmounted before the directory is removed.
    _mount: Option<Tmpfs>,
    /// The PostgreSQL server the coordinator keeps its jobs in, when the
    /// suite runs on PostgreSQL ([`BACKEND_ENV`]).
    pub postgres: Option<crate::pg::Postgres>,
    _dir: KeptDir,
    pub data_dir: PathBuf,
    pub port: u16,
    pub coordinator: Option<Child>,
    coordinator_starts: u32,
    pub agents: Vec<Agent>,
    client: Option<ApiClient>,
    pub fake: FakeLlm,
    pub settings: ClusterBuilder,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            heartbeat_ms: 300,
            lease_ttl_ms: 1500,
            retry_base_ms: 50,
            max_attempts: 3,
            long_poll_ms: 5000,
            fake: FakeBehavior::default(),
            serve_args: Vec::new(),
            listen_ip: "127.0.0.1".to_string(),
            tmpfs_mib: None,
            coordinator_env: Vec::new(),
            data_dir: None,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.data_dir.join("ca.pem")
    }

    /// Runs `kobo-coord ARGS --data-dir <this cluster's>` to its end.
    pub async fn kobo_coord(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(binary("kobo-coord"))
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .await
            .expect("run kobo-coord")
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("kobo.db")
    }

    /// Where the current coordinator process's standard output goes (the
    /// dashboard URL and its one-time login link).
    pub fn coordinator_stdout_path(&self) -> PathBuf {
        self.data_dir
            .join(format!("coordinator-{}.out", self.coordinator_starts))
    }

    /// Starts (or restarts) the coordinator on the same port and data
    /// directory, and waits until it answers.
    pub async fn start_coordinator(&mut self) {
        self.coordinator_starts += 1;
        let log = self.coordinator_log_path();
        let child = self
            .serve_command()
            .stdout(
                std::fs::File::create(self.coordinator_stdout_path()).expect("coordinator stdout"),
            )
            .stderr(std::fs::File::create(&log).expect("coordinator log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start kobo-coord");
        self.coordinator = Some(child);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.ca_path().exists()
                && let Ok(client) = ApiClient::new(&Endpoint {
                    url: self.url(),
                    ca_pem: std::fs::read(self.ca_path()).ok(),
                    api_key: kobo_protocol::DataDir::new(&self.data_dir).local_admin_key(),
                })
                // A standby (`--standby-for`) answers only its readiness
                // (asked first: other calls move the client to the leader).
                && (client
                    .readiness()
                    .await
                    .is_ok_and(|r| r.role == "standby")
                    || client.nodes().await.is_ok())
            {
                self.client = Some(client);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "coordinator did not start; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The log of the current (latest) coordinator process.
    pub fn coordinator_log_path(&self) -> PathBuf {
        self.data_dir
            .join(format!("coordinator-{}.log", self.coordinator_starts))
    }

    /// `kobo-coord serve` with the cluster's settings, not yet started.
    pub fn serve_command(&self) -> Command {
        let s = &self.settings;
        let mut command = Command::new(binary("kobo-coord"));
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("{}:{}", s.listen_ip, self.port))
            .args(["--heartbeat-ms", &s.heartbeat_ms.to_string()])
            .args(["--lease-ttl-ms", &s.lease_ttl_ms.to_string()])
            .args(["--retry-base-ms", &s.retry_base_ms.to_string()])
            .args(["--max-attempts", &s.max_attempts.to_string()])
            .args(["--long-poll-ms", &s.long_poll_ms.to_string()])
            .args(&s.serve_args)
            .env("RUST_LOG", "info,kobo_coord=debug")
            .envs(s.coordinator_env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// SIGKILLs the coordinator and waits for it to be gone.
    pub async fn kill_coordinator(&mut self) {
        if let Some(mut child) = self.coordinator.take() {
            child.start_kill().expect("kill coordinator");
            let _ = child.wait().await;
        }
    }

    pub fn client(&self) -> &ApiClient {
        self.client.as_ref().expect("coordinator started")
    }

    /// Starts an agent process and waits until the coordinator lists it.
    pub async fn agent(&mut self, spec: AgentSpec) -> usize {
        let node_id = spec.node_id.clone();
        let idx = self.spawn_agent(spec).await;
        self.wait_registered(&[node_id]).await;
        idx
    }

    /// Starts many agent processes at once, then waits until the
    /// coordinator lists them all active.
    pub async fn agents(&mut self, specs: Vec<AgentSpec>) {
        let ids: Vec<String> = specs.iter().map(|s| s.node_id.clone()).collect();
        for spec in specs {
            self.spawn_agent(spec).await;
        }
        self.wait_registered(&ids).await;
    }

    async fn wait_registered(&self, node_ids: &[String]) {
        let what = match node_ids {
            [one] => format!("agent {one} registered"),
            many => format!("{} agents registered", many.len()),
        };
        self.wait_until(&what, || async {
            self.client()
                .nodes()
                .await
                .map(|nodes| {
                    node_ids.iter().all(|id| {
                        nodes.iter().any(|n| {
                            &n.node_id == id && n.status == kobo_protocol::NodeStatus::Active
                        })
                    })
                })
                .unwrap_or(false)
        })
        .await;
    }

    /// Starts an agent process (enrolled with a fresh join token).
    async fn spawn_agent(&mut self, spec: AgentSpec) -> usize {
        let idx = self.agents.len();
        let log = self
            .data_dir
            .join(format!("agent-{}-{idx}.log", spec.node_id));
        // Every agent enrolls the real way: a single-use join token, a key
        // made by the agent, a certificate from the coordinator's CA.
        let token = self
            .client()
            .token_create(&spec.node_id, Duration::from_secs(300))
            .await
            .expect("join token")
            .token;
        let state_dir = self
            .data_dir
            .join("agents")
            .join(format!("{}-{idx}", spec.node_id));
        let mut command = match spec.prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary("kobo-agent"));
                command
            }
            None => Command::new(binary("kobo-agent")),
        };
        let url = spec.coordinator_url.clone().unwrap_or_else(|| self.url());
        command
            .arg("join")
            .arg(url)
            .args(["--token", &token])
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--node-id", &spec.node_id])
            .args(["--region", &spec.region])
            .args(["--capabilities", &spec.capabilities.join(",")])
            .args(["--llm", &spec.backend])
            .args(["--max-workers", &spec.max_workers.to_string()])
            .args(["--drain-timeout-secs", &spec.drain_secs.to_string()]);
        if spec.backend != "sim" {
            command.args(["--llm-endpoint", &self.fake.url()]);
        }
        let child = command
            .args(&spec.extra_args)
            .env("RUST_LOG", "info,kobo_agent=debug")
            .env_remove("OPENAI_API_KEY")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start kobo-agent");
        self.agents.push(Agent { spec, child, log });
        idx
    }

    /// Enrolls `node_id` in-process (token, key, CSR, certificate) and
    /// returns a protocol client presenting its certificate.
    pub async fn enroll(&self, node_id: &str) -> kobo_agent::coordinator::CoordinatorClient {
        let identity = self.enroll_identity(node_id).await;
        let ca = std::fs::read(self.ca_path()).expect("ca");
        kobo_agent::coordinator::CoordinatorClient::new(&self.url(), Some(&ca), Some(&identity))
            .expect("client")
    }

    /// A raw HTTPS client presenting a freshly enrolled certificate of `node_id`.
    pub async fn enroll_raw(&self, node_id: &str) -> reqwest::Client {
        let identity = self.enroll_identity(node_id).await;
        let mut pem = identity.cert_pem.clone();
        pem.push(b'\n');
        pem.extend_from_slice(&identity.key_pem);
        let ca = std::fs::read(self.ca_path()).expect("ca");
        reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("ca"))
            .identity(reqwest::Identity::from_pem(&pem).expect("identity"))
            .build()
            .expect("client")
    }

    /// Enrolls `node_id` (token, key, CSR, certificate) and returns its identity.
    pub async fn enroll_identity(&self, node_id: &str) -> kobo_agent::identity::TlsIdentity {
        let token = self
            .client()
            .token_create(node_id, Duration::from_secs(300))
            .await
            .expect("join token")
            .token;
        let dir = self.data_dir.join("enrolled").join(node_id);
        kobo_agent::identity::join(&self.url(), &token, node_id, &dir)
            .await
            .expect("join");
        kobo_agent::identity::IdentityFiles::in_dir(&dir)
            .load()
            .expect("identity")
    }

    /// A client of the API with a new key of `role`.
    pub async fn client_with_role(&self, role: kobo_protocol::AccessRole) -> (ApiClient, String) {
        let (client, created) = self
            .client_with_policy(
                &format!("test-{role}"),
                role,
                kobo_protocol::KeyPolicy::default(),
            )
            .await;
        (client, created.key)
    }

    /// A client of the API with a new key named `name` of `role` and
    /// `policy` (weight, class, limits, budget); the key as created.
    pub async fn client_with_policy(
        &self,
        name: &str,
        role: kobo_protocol::AccessRole,
        policy: kobo_protocol::KeyPolicy,
    ) -> (ApiClient, kobo_protocol::ApiKeyCreated) {
        let created = self
            .client()
            .apikey_create(name, role, policy)
            .await
            .expect("api key");
        let client = ApiClient::new(&Endpoint {
            url: self.url(),
            ca_pem: std::fs::read(self.ca_path()).ok(),
            api_key: Some(created.key.clone()),
        })
        .expect("client");
        (client, created)
    }

    /// Polls `check` until it is true, or fails the test after [`PATIENCE`].
    pub async fn wait_until<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + PATIENCE;
        while !check().await {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The whole text of every process log.
    pub fn all_log_text(&self) -> String {
        let Ok(entries) = std::fs::read_dir(&self.data_dir) else {
            return String::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// The last lines of every process log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(&self.data_dir) else {
            return out;
        };
        let mut paths: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {} (last lines)\n", path.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    pub async fn submit(&self, job: &SubmitJob) -> JobId {
        self.client().submit(job).await.expect("submit").id
    }

    pub async fn submit_prompt(&self, kind: &str, prompt: &str) -> JobId {
        self.submit(&job(kind, prompt)).await
    }

    /// Waits for the job to reach a terminal state.
    pub async fn wait_done(&self, id: JobId) -> JobView {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let job = self
                .client()
                .wait(id, Duration::from_secs(5))
                .await
                .expect("wait");
            if job.state.is_terminal() {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} still {} after {PATIENCE:?}\n{}",
                job.state,
                self.logs()
            );
        }
    }

    /// Waits for the job to reach `state`.
    pub async fn wait_state(&self, id: JobId, state: JobState) -> JobView {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let job = self.client().job(id).await.expect("get job").job;
            if job.state == state {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} is {} not {state} after {PATIENCE:?}\n{}",
                job.state,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `PRAGMA integrity_check` of the database file: `ok` when intact.
    pub fn integrity_check(&self) -> String {
        self.db()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity check")
    }

    /// A read-only connection to the coordinator's database file.
    pub fn db(&self) -> rusqlite::Connection {
        assert!(
            self.postgres.is_none(),
            "this test reads the coordinator's SQLite file: it runs with {BACKEND_ENV} unset only"
        );
        open_read_only(&self.db_path())
    }
}

/// Set to `postgres` to run the end-to-end tests with every coordinator on
/// a throwaway PostgreSQL server (`--database`) instead of its SQLite file.
pub const BACKEND_ENV: &str = "KOBO_TEST_BACKEND";

/// Whether this run puts coordinators on PostgreSQL ([`BACKEND_ENV`]).
pub fn on_postgres() -> bool {
    std::env::var(BACKEND_ENV).is_ok_and(|v| v == "postgres")
}

pub fn open_read_only(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open kobo.db");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    conn
}

/// A plain job of `kind` with `prompt`.
pub fn job(kind: &str, prompt: &str) -> SubmitJob {
    SubmitJob {
        kind: kind.to_string(),
        prompt: Some(prompt.to_string()),
        ..SubmitJob::default()
    }
}
