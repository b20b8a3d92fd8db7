//! Real PostgreSQL 15 for tests: [`Postgres::start`] runs a throwaway server
//! (initdb into a temporary directory, a free loopback port, database
//! `kobo`); [`Patroni::start`] runs an etcd and several Patroni-managed
//! servers with synchronous replication, for failover tests. Both stop their
//! processes and remove their directories on drop, also when a test panics.
//!
//! PostgreSQL refuses to run as root and CI is root: as root every server
//! process runs as Debian's `postgres` account (made by the postgresql-15
//! package), in a temporary directory it owns; otherwise as the current
//! user. Debian's default cluster on port 5432 is never used.
//!
//! Clients authenticate with a password (scram-sha-256) over TCP on
//! 127.0.0.1, as kobo-coord does against a real server; the Unix socket
//! sits in the temporary directory, reachable by its owner only.
//!
//! Needs Debian's postgresql-15 (and patroni, etcd-server for [`Patroni`]);
//! `scripts/install-test-deps` installs them.

mod patroni;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio_postgres::NoTls;

pub use patroni::Patroni;

use crate::cluster::free_port;

/// Where Debian's postgresql-15 puts the server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The role and database the servers are made with, as in production.
pub const USER: &str = "kobo";
pub const DATABASE: &str = "kobo";
/// The role's password: the servers listen on loopback only.
pub const PASSWORD: &str = "kobo-test-password";

/// How long a server gets to accept connections (initdb excluded); generous
/// because the test machine is shared with builds.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// How long a fast shutdown (SIGINT) gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Pause between readiness probes.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// Ports tried when another process takes the free port first.
const PORT_ATTEMPTS: usize = 3;

/// A throwaway PostgreSQL 15 server on loopback with database `kobo`.
pub struct Postgres {
    port: u16,
    postmaster: Child,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Runs initdb and starts the server; returns once database `kobo`
    /// accepts connections.
    pub async fn start() -> Postgres {
        let dir = owned_temp_dir("kobo-pg-");
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        // initdb blocks for a second or two: off the runtime's threads, so
        // servers started together initialise in parallel.
        let (root, target) = (dir.path().to_path_buf(), data.clone());
        tokio::task::spawn_blocking(move || initdb(&root, &target))
            .await
            .expect("initdb");
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port();
            let mut postmaster = server_command(&pg_tool("postgres"), dir.path())
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(dir.path())
                .args(["-c", "listen_addresses=127.0.0.1"])
                // A test server: an OS crash may lose it, a killed process
                // does not (the kernel keeps the written pages).
                .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
                .args(["-c", "shared_buffers=32MB"])
                .stderr(File::create(&log).expect("create postgres.log"))
                .spawn()
                .unwrap_or_else(|e| panic!("starting postgres: {e}"));
            match wait_ready(&mut postmaster, &url(port, "postgres"), &log).await {
                Ok(()) => {
                    let server = Postgres {
                        port,
                        postmaster,
                        dir,
                    };
                    let admin = connect(&server.url_for("postgres")).await.expect("connect");
                    admin
                        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
                        .await
                        .expect("create database kobo");
                    return server;
                }
                Err(why) => {
                    stop(&mut postmaster, Signal::SIGINT);
                    // Another process may have taken the port first.
                    if !(why.contains("Address already in use") && attempt < PORT_ATTEMPTS) {
                        panic!("postgres did not start: {why}");
                    }
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `postgres://kobo:…@127.0.0.1:PORT/kobo`.
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// The URL of another database on this server.
    pub fn url_for(&self, database: &str) -> String {
        url(self.port, database)
    }

    /// Creates an empty database (tests sharing one server each take their
    /// own) and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        let client = connect(&self.url()).await.expect("connect");
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        self.url_for(name)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory holding the data directory and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop(&mut self.postmaster, Signal::SIGINT);
    }
}

fn url(port: u16, database: &str) -> String {
    format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{port}/{database}")
}

/// Waits until the server at `url` accepts connections; why not if the
/// postmaster exits or the patience runs out.
async fn wait_ready(postmaster: &mut Child, url: &str, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + START_PATIENCE;
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Some(status) = postmaster.try_wait().expect("poll postgres") {
            return Err(format!("postgres exited ({status}):\n{}", log()));
        }
        if connect(url).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not ready after {START_PATIENCE:?}:\n{}", log()));
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Connects with tokio-postgres (no TLS: loopback), driving the connection
/// on a task of its own.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// initdb with the `kobo` superuser, password authentication over TCP.
fn initdb(dir: &Path, data: &Path) {
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, PASSWORD).expect("write pwfile");
    chown_to_account(&pwfile);
    let output = server_command(&pg_tool("initdb"), dir)
        .arg("-D")
        .arg(data)
        .args(["-U", USER, "--pwfile"])
        .arg(&pwfile)
        .args(["--auth-host=scram-sha-256", "--auth-local=trust"])
        .args([
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ])
        .output()
        .unwrap_or_else(|e| panic!("running initdb: {e}"));
    assert!(
        output.status.success(),
        "initdb failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A PostgreSQL 15 server binary.
pub(crate) fn pg_tool(name: &str) -> PathBuf {
    let path = Path::new(PG_BIN).join(name);
    assert!(
        path.exists(),
        "{} is missing: install Debian's postgresql-15 (scripts/install-test-deps does)",
        path.display()
    );
    path
}

/// A command run as the server account, in `dir`, in a process group of its
/// own (so that a kill reaches its children), with a minimal environment.
pub(crate) fn server_command(program: &Path, dir: &Path) -> Command {
    let mut command = Command::new(program);
    // A clean environment: PG* or PATRONI_* variables of the test's own
    // would override the configuration.
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("LC_ALL", "C.UTF-8")
        .current_dir(dir)
        .stdin(Stdio::null())
        .process_group(0);
    if let Some((uid, gid)) = account() {
        command.uid(uid).gid(gid);
    }
    command
}

/// The `postgres` account's uid and gid when running as root, else `None`
/// (run as the current user).
fn account() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .expect("look up the postgres account")
        .expect(
            "running as root, the tests start PostgreSQL as the `postgres` account: \
             install Debian's postgresql-15, which creates it (scripts/install-test-deps does)",
        );
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

/// Gives a path to the server account (no-op unless root).
pub(crate) fn chown_to_account(path: &Path) {
    if let Some((uid, gid)) = account() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// A temporary directory owned by the server account; short, because a Unix
/// socket's path must fit in 107 bytes.
pub(crate) fn owned_temp_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("temp dir");
    chown_to_account(dir.path());
    dir
}

/// Sends `first` to a child, waits [`STOP_GRACE`], then SIGKILLs its
/// process group, and reaps it.
pub(crate) fn stop(child: &mut Child, first: Signal) {
    let pid = Pid::from_raw(child.id() as i32);
    if child.try_wait().ok().flatten().is_some() {
        let _ = killpg(pid, Signal::SIGKILL);
        return;
    }
    let _ = kill(pid, first);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            let _ = killpg(pid, Signal::SIGKILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = child.wait();
}

/// True once a process (not necessarily a child) is gone or a zombie.
pub(crate) fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Waits (bounded) until a process is gone or a zombie.
pub(crate) fn wait_gone(pid: i32, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    while !is_gone(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}
