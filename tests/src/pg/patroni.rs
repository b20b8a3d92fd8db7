//! A Patroni cluster on loopback for failover tests: one etcd, `n`
//! PostgreSQL 15 servers each run by its own Patroni, in synchronous mode.
//!
//! Each member's configuration is a directory Patroni merges in name order:
//! `00-kobo.yml`, the sample shipped to users (deploy/patroni/patroni.yml,
//! unchanged), then `10-member.yml` with this member's ports, directories,
//! passwords and the test's faster timings ([`TTL_S`] and friends).
//!
//! [`Patroni::kill_member`] is a lost machine: SIGKILL to the member's
//! Patroni and to its PostgreSQL (postmaster and backends) at once. Killing
//! only the postmaster is no failover: Patroni, still holding the leader
//! key, restarts it in place within a few seconds.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

use super::{
    DATABASE, PASSWORD, PG_BIN, USER, chown_to_account, connect, is_gone, owned_temp_dir,
    server_command, stop, wait_gone,
};
use crate::cluster::free_port;

/// The sample configuration, as users get it.
const SAMPLE_CONFIG: &str = include_str!("../../../deploy/patroni/patroni.yml");
/// Its post_bootstrap script (creates role and database `kobo`).
const POST_BOOTSTRAP: &str = include_str!("../../../deploy/patroni/kobo-post-bootstrap.sh");

/// The test's timings. A dead primary's leader key expires `ttl` seconds
/// after its last refresh (made every `loop_wait`), so promotion follows a
/// kill by ttl - loop_wait to ttl seconds, plus a promote; Patroni wants
/// loop_wait + 2 * retry_timeout <= ttl. retry_timeout is how long an etcd
/// or PostgreSQL call may stall before a primary demotes itself: 5 s rides
/// out a test machine busy with builds.
const TTL_S: u64 = 12;
const LOOP_WAIT_S: u64 = 2;
const RETRY_TIMEOUT_S: u64 = 5;

/// Superuser and replication passwords of the test cluster.
const SUPERUSER_PASSWORD: &str = "kobo-test-superuser";
const REPLICATION_PASSWORD: &str = "kobo-test-replication";

/// How long bootstrap (initdb, pg_basebackup, the first sync) may take.
const START_PATIENCE: Duration = Duration::from_secs(120);
/// How long a promotion may take after the primary is lost.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(90);
/// Pause between REST API polls.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// How long killed processes get to disappear.
const KILL_PATIENCE: Duration = Duration::from_secs(10);

/// One etcd and `n` Patroni-managed PostgreSQL servers on loopback.
pub struct Patroni {
    members: Vec<Member>,
    etcd: Child,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

/// One Patroni and its PostgreSQL ("a machine").
struct Member {
    name: String,
    pg_port: u16,
    api_port: u16,
    dir: PathBuf,
    /// `None` once killed.
    patroni: Option<Child>,
}

impl Member {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The postmaster's pid, from its pid file.
    fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("patroni.log")).unwrap_or_default()
    }
}

impl Patroni {
    /// Starts etcd and `n` members; returns once there is a leader and a
    /// streaming synchronous standby, and database `kobo` takes connections
    /// through [`Patroni::multi_host_url`].
    pub async fn start(n: usize) -> Patroni {
        assert!(n >= 2, "a Patroni cluster for failover needs two members");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = owned_temp_dir("kobo-patroni-");
        let root = dir.path().to_path_buf();
        let etcd_port = free_port();
        let etcd = start_etcd(&root, etcd_port);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let script = root.join("kobo-post-bootstrap.sh");
        std::fs::write(&script, POST_BOOTSTRAP).expect("write post_bootstrap");
        set_mode(&script, 0o755);
        let mut cluster = Patroni {
            members: Vec::new(),
            etcd,
            http,
            dir,
        };
        cluster.wait_for_etcd(etcd_port).await;
        for idx in 0..n {
            let member = Member {
                name: format!("pg{idx}"),
                pg_port: free_port(),
                api_port: free_port(),
                dir: root.join(format!("pg{idx}")),
                patroni: None,
            };
            write_member_config(&member, etcd_port, &script, &root);
            cluster.members.push(member);
        }
        for idx in 0..n {
            cluster.start_member(idx);
        }
        cluster.wait_until_replicated().await;
        cluster
    }

    /// `postgres://kobo:…@127.0.0.1:P1,127.0.0.1:P2/kobo?target_session_attrs=read-write`:
    /// connects to whichever member is the primary.
    pub fn multi_host_url(&self) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.pg_port))
            .collect();
        format!(
            "postgres://{USER}:{PASSWORD}@{}/{DATABASE}?target_session_attrs=read-write",
            hosts.join(",")
        )
    }

    /// The URL of database `kobo` on member `idx` alone.
    pub fn member_url(&self, idx: usize) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
            self.members[idx].pg_port
        )
    }

    /// Member `idx`'s PostgreSQL port.
    pub fn pg_port(&self, idx: usize) -> u16 {
        self.members[idx].pg_port
    }

    /// Member `idx`'s name in Patroni (`pg0`, `pg1`, …).
    pub fn name(&self, idx: usize) -> &str {
        &self.members[idx].name
    }

    /// The member that is the primary now: its Patroni holds the leader key
    /// and its PostgreSQL runs as primary (`GET /primary` answers 200).
    /// Waits for one, in case a promotion is under way.
    pub async fn primary(&self) -> usize {
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        loop {
            if let Some(idx) = self.primary_now(None).await {
                return idx;
            }
            assert!(
                Instant::now() < deadline,
                "no primary after {FAILOVER_PATIENCE:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Waits until a member other than `old` is the primary; returns it and
    /// the time waited.
    pub async fn wait_for_primary_other_than(&self, old: usize) -> (usize, Duration) {
        let started = Instant::now();
        loop {
            if let Some(idx) = self.primary_now(Some(old)).await {
                return (idx, started.elapsed());
            }
            assert!(
                started.elapsed() < FAILOVER_PATIENCE,
                "no member but {} became primary within {FAILOVER_PATIENCE:?}\n{}",
                self.members[old].name,
                self.logs()
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Loses member `idx` like a machine: SIGKILLs its Patroni and its
    /// PostgreSQL together and waits until both are gone. Returns when the
    /// signals were sent.
    pub fn kill_member(&mut self, idx: usize) -> Instant {
        let member = &mut self.members[idx];
        let postmaster = member
            .postmaster_pid()
            .unwrap_or_else(|| panic!("{} runs no PostgreSQL", member.name));
        // Patroni starts the postmaster in a session of its own: its group
        // holds the backends too.
        let pg_group = nix::unistd::getpgid(Some(Pid::from_raw(postmaster)))
            .unwrap_or_else(|e| panic!("process group of postmaster {postmaster}: {e}"));
        let mut patroni = member
            .patroni
            .take()
            .unwrap_or_else(|| panic!("{} was already killed", member.name));
        let killed_at = Instant::now();
        let _ = killpg(Pid::from_raw(patroni.id() as i32), Signal::SIGKILL);
        let _ = killpg(pg_group, Signal::SIGKILL);
        let _ = patroni.wait();
        assert!(
            wait_gone(postmaster, KILL_PATIENCE),
            "postmaster {postmaster} outlived SIGKILL"
        );
        killed_at
    }

    /// Every member's Patroni log (PostgreSQL's log included) and etcd's.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for member in &self.members {
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                member.name,
                tail(&member.log())
            ));
        }
        let etcd = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        out.push_str(&format!("--- etcd ---\n{}\n", tail(&etcd)));
        out
    }

    fn start_member(&mut self, idx: usize) {
        let member = &mut self.members[idx];
        let log = std::fs::File::create(member.dir.join("patroni.log")).expect("patroni.log");
        chown_to_account(&member.dir.join("patroni.log"));
        let child = server_command(&tool("patroni", "patroni"), &member.dir)
            .arg(member.dir.join("conf"))
            .env("KOBO_DB_PASSWORD", PASSWORD)
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting patroni: {e}"));
        member.patroni = Some(child);
    }

    async fn wait_for_etcd(&mut self, port: u16) {
        let deadline = Instant::now() + START_PATIENCE;
        let url = format!("http://127.0.0.1:{port}/health");
        loop {
            if let Some(status) = self.etcd.try_wait().expect("poll etcd") {
                panic!("etcd exited ({status})\n{}", self.logs());
            }
            if let Ok(response) = self.http.get(&url).send().await
                && let Ok(body) = response.json::<Value>().await
                && body["health"] == "true"
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy\n{}",
                self.logs()
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Waits for a running leader, every other member running as a standby,
    /// one of them synchronous in Patroni's view (so promotable) and in the
    /// primary's (`pg_stat_replication`: streaming, `sync`), and the `kobo`
    /// database made by post_bootstrap.
    async fn wait_until_replicated(&mut self) {
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            for member in &mut self.members {
                if let Some(child) = member.patroni.as_mut()
                    && let Some(status) = child.try_wait().expect("poll patroni")
                {
                    panic!(
                        "patroni {} exited ({status})\n{}",
                        member.name,
                        member.log()
                    );
                }
            }
            if self.replicated().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no leader with a streaming synchronous standby after {START_PATIENCE:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    async fn replicated(&self) -> bool {
        let Some(view) = self.cluster_view().await else {
            return false;
        };
        let members = view["members"].as_array().cloned().unwrap_or_default();
        let running = |role: &str| {
            members
                .iter()
                .filter(|m| m["role"] == role && m["state"] == "running")
                .count()
        };
        if members.len() != self.members.len()
            || running("leader") != 1
            || running("sync_standby") < 1
            || running("sync_standby") + running("replica") != members.len() - 1
        {
            return false;
        }
        let Some(leader) = self.primary_now(None).await else {
            return false;
        };
        let superuser = format!(
            "postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/postgres",
            self.members[leader].pg_port
        );
        let Ok(client) = connect(&superuser).await else {
            return false;
        };
        let Ok(row) = client
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'streaming'), \
                        count(*) FILTER (WHERE state = 'streaming' AND sync_state = 'sync') \
                 FROM pg_stat_replication",
                &[],
            )
            .await
        else {
            return false;
        };
        let (streaming, sync): (i64, i64) = (row.get(0), row.get(1));
        streaming == (self.members.len() - 1) as i64
            && sync >= 1
            && connect(&self.multi_host_url()).await.is_ok()
    }

    /// `GET /cluster` from the first live member that answers.
    async fn cluster_view(&self) -> Option<Value> {
        for member in self.members.iter().filter(|m| m.patroni.is_some()) {
            let url = format!("http://127.0.0.1:{}/cluster", member.api_port);
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
                && let Ok(view) = response.json::<Value>().await
            {
                return Some(view);
            }
        }
        None
    }

    /// The live member (other than `except`) whose `GET /primary` answers 200.
    async fn primary_now(&self, except: Option<usize>) -> Option<usize> {
        for (idx, member) in self.members.iter().enumerate() {
            if Some(idx) == except || member.patroni.is_none() {
                continue;
            }
            let url = format!("http://127.0.0.1:{}/primary", member.api_port);
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                return Some(idx);
            }
        }
        None
    }
}

impl Drop for Patroni {
    fn drop(&mut self) {
        for member in &mut self.members {
            let postmaster = member.postmaster_pid();
            if let Some(mut patroni) = member.patroni.take() {
                let _ = killpg(Pid::from_raw(patroni.id() as i32), Signal::SIGKILL);
                let _ = patroni.wait();
            }
            if let Some(pid) = postmaster.filter(|&pid| !is_gone(pid))
                && let Ok(group) = nix::unistd::getpgid(Some(Pid::from_raw(pid)))
            {
                let _ = killpg(group, Signal::SIGKILL);
                wait_gone(pid, KILL_PATIENCE);
            }
        }
        // Anything else still running from this cluster's directory (a
        // postmaster started as Patroni died, before its pid file).
        kill_processes_mentioning(self.dir.path());
        stop(&mut self.etcd, Signal::SIGKILL);
    }
}

/// Writes member configuration: the sample, then this member's values
/// (JSON, which YAML reads as is).
fn write_member_config(member: &Member, etcd_port: u16, script: &Path, root: &Path) {
    let conf = member.dir.join("conf");
    std::fs::create_dir_all(&conf).expect("create conf dir");
    std::fs::write(conf.join("00-kobo.yml"), SAMPLE_CONFIG).expect("write sample config");
    let local = |port: u16| format!("127.0.0.1:{port}");
    let overrides = json!({
        "name": member.name,
        "restapi": { "listen": local(member.api_port), "connect_address": local(member.api_port) },
        "etcd3": { "hosts": local(etcd_port) },
        "bootstrap": {
            "dcs": { "ttl": TTL_S, "loop_wait": LOOP_WAIT_S, "retry_timeout": RETRY_TIMEOUT_S },
            "post_bootstrap": script,
        },
        "postgresql": {
            "listen": local(member.pg_port),
            "connect_address": local(member.pg_port),
            "data_dir": member.data_dir(),
            "bin_dir": PG_BIN,
            "pgpass": member.dir.join("pgpass"),
            "authentication": {
                "superuser": { "password": SUPERUSER_PASSWORD },
                "replication": { "password": REPLICATION_PASSWORD },
            },
            "pg_hba": [
                "local all all trust",
                "host replication replicator 127.0.0.1/32 scram-sha-256",
                "host all all 127.0.0.1/32 scram-sha-256",
            ],
            // Sockets in the cluster's own directory; fsync stays on.
            "parameters": { "unix_socket_directories": root },
        },
    });
    std::fs::write(
        conf.join("10-member.yml"),
        serde_json::to_string_pretty(&overrides).expect("json"),
    )
    .expect("write member config");
    for path in [&member.dir, &conf] {
        chown_to_account(path);
    }
    chown_to_account(&conf.join("00-kobo.yml"));
    chown_to_account(&conf.join("10-member.yml"));
}

/// A single-member etcd on loopback (client and peer ports of its own).
fn start_etcd(root: &Path, client_port: u16) -> Child {
    let peer = format!("http://127.0.0.1:{}", free_port());
    let client = format!("http://127.0.0.1:{client_port}");
    let log = std::fs::File::create(root.join("etcd.log")).expect("etcd.log");
    server_command(&tool("etcd", "etcd-server"), root)
        .args(["--name", "etcd0", "--data-dir"])
        .arg(root.join("etcd"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("etcd0={peer}")])
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting etcd: {e}"))
}

/// SIGKILLs every process whose command line mentions `dir`, and waits.
fn kill_processes_mentioning(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let pids: Vec<i32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&needle))
        })
        .collect();
    for &pid in &pids {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    for pid in pids {
        wait_gone(pid, KILL_PATIENCE);
    }
}

/// `/usr/bin/NAME`, or a panic naming the Debian package.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: install Debian's {package} (scripts/install-test-deps does)",
        path.display()
    );
    path
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// The last lines of a log, enough for a failure message.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
