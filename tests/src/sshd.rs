//! Real `sshd`s as provisioning targets. Each "host" is an OpenSSH server
//! started here with generated host and client keys: when running as root
//! and network namespaces work, each in a network namespace of its own on a
//! bridge (10.200.X.0/24; the test machine is 10.200.X.1), so agents started
//! on a host reach the coordinator over a real network; otherwise several
//! sshds on loopback ports. All processes started on the hosts are killed
//! and the namespaces and bridge deleted on drop.
//!
//! Needs `/usr/sbin/sshd` and `ssh-keygen` (Debian: openssh-server, which
//! `scripts/install-test-deps` installs) and `ip` (iproute2) for namespaces.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The OpenSSH server; it insists on an absolute path.
const SSHD: &str = "/usr/sbin/sshd";
/// How long an sshd gets to accept connections.
const SSHD_START: Duration = Duration::from_secs(10);
/// Set to `0` to use loopback sshds even where namespaces would work.
const NETNS_ENV: &str = "KOBO_TEST_NETNS";

/// One test host: an sshd and the directory agents are installed in.
pub struct SshHost {
    pub name: String,
    /// The address provisioning connects to.
    pub address: String,
    pub port: u16,
    /// The host's `install_dir` (unique per host: namespaces share the file system).
    pub install_dir: PathBuf,
    /// `ssh-ed25519 AAAA…` of the host key.
    pub host_key_pub: String,
    /// The network namespace, when hosts are namespaces.
    pub netns: Option<String>,
    dir: PathBuf,
    sshd: Option<Child>,
}

impl SshHost {
    /// The sshd's log.
    pub fn sshd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// The agent's log on this host.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.install_dir.join("log/agent.log")).unwrap_or_default()
    }

    /// `SHA256:…` of the host key, as `ssh-keygen -l` prints it.
    pub fn host_key_fingerprint(&self) -> String {
        let output = Command::new(tool("ssh-keygen"))
            .arg("-l")
            .arg("-f")
            .arg(self.dir.join("ssh_host_ed25519_key.pub"))
            .output()
            .expect("ssh-keygen -l");
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .nth(1)
            .expect("a fingerprint")
            .to_string()
    }

    /// The supervisor's pid, from its pid file.
    pub fn supervisor_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.install_dir.join("run/supervisor.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

struct Bridge {
    name: String,
}

/// A set of test hosts.
pub struct SshFleet {
    _dir: tempfile::TempDir,
    pub hosts: Vec<SshHost>,
    /// The private key every host's root accepts.
    pub client_key: PathBuf,
    /// The address hosts reach this machine at (coordinator, fake LLM).
    pub gateway: String,
    bridge: Option<Bridge>,
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!(
        "{name} is missing: install openssh-server and iproute2 (scripts/install-test-deps does)"
    );
}

/// Runs a setup command; panics with its output if it fails.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(tool(program))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn keygen(path: &Path) {
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "kobo-test",
            "-f",
            path.to_str().unwrap(),
        ],
    );
}

/// Whether network namespaces can be made here (root, iproute2, kernel).
fn namespaces_work() -> bool {
    if std::env::var(NETNS_ENV).is_ok_and(|v| v == "0") {
        return false;
    }
    let probe = format!("kobo-probe-{}", std::process::id());
    let Ok(status) = Command::new("ip")
        .args(["netns", "add", &probe])
        .stderr(Stdio::null())
        .status()
    else {
        return false;
    };
    if !status.success() {
        return false;
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    // The hosts hang off a bridge: that must work too.
    let bridge = format!("kbp{}", std::process::id() % 100_000);
    let bridged = Command::new("ip")
        .args(["link", "add", &bridge, "type", "bridge"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if bridged {
        let _ = Command::new("ip").args(["link", "del", &bridge]).status();
    }
    bridged
}

/// A /24 in 10.200.0.0/16 no interface uses yet.
fn free_subnet() -> u8 {
    let used = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let start = (std::process::id() % 200) as u8;
    (0..250u8)
        .map(|i| (start.wrapping_add(i) % 250) + 1)
        .find(|x| !used.contains(&format!("10.200.{x}.")))
        .expect("a free 10.200.X.0/24")
}

fn wait_listening(address: &str, port: u16, log: &Path) {
    let addr: SocketAddr = format!("{address}:{port}").parse().expect("address");
    let deadline = Instant::now() + SSHD_START;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sshd on {addr} did not start:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl SshFleet {
    /// Starts `n` hosts named `h0`, `h1`, ….
    pub fn start(n: usize) -> SshFleet {
        let sshd = tool("sshd");
        assert_eq!(sshd, Path::new(SSHD), "sshd must be {SSHD}");
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").expect("creating /run/sshd (run the tests as root)");
        let dir = tempfile::Builder::new()
            .prefix("kobo-hosts-")
            .tempdir()
            .expect("temp dir");
        let client_key = dir.path().join("client_key");
        keygen(&client_key);
        let authorized = dir.path().join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).expect("authorized_keys");
        let netns = namespaces_work();
        let id: String = format!("{:04x}", rand_u16());
        // Fleets of tests running at once must not pick the same subnet.
        let _setup = NETWORK_SETUP
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (gateway, bridge, subnet) = if netns {
            let subnet = free_subnet();
            let bridge = format!("kb{id}");
            run("ip", &["link", "add", &bridge, "type", "bridge"]);
            let bridge_guard = Bridge {
                name: bridge.clone(),
            };
            run(
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("10.200.{subnet}.1/24"),
                    "dev",
                    &bridge,
                ],
            );
            run("ip", &["link", "set", &bridge, "up"]);
            (format!("10.200.{subnet}.1"), Some(bridge_guard), subnet)
        } else {
            ("127.0.0.1".to_string(), None, 0)
        };
        let mut fleet = SshFleet {
            _dir: dir,
            hosts: Vec::new(),
            client_key,
            gateway,
            bridge,
        };
        for idx in 0..n {
            let host_dir = fleet._dir.path().join(format!("h{idx}"));
            std::fs::create_dir_all(&host_dir).expect("host dir");
            let host_key = host_dir.join("ssh_host_ed25519_key");
            keygen(&host_key);
            let host_key_pub = std::fs::read_to_string(host_key.with_extension("pub"))
                .expect("host key")
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            let (address, port, ns) = if let Some(bridge) = &fleet.bridge {
                let ns = format!("kobo-{id}-{idx}");
                let (outside, inside) = (format!("kv{id}{idx}"), format!("kp{id}{idx}"));
                let address = format!("10.200.{subnet}.{}", 10 + idx);
                run("ip", &["netns", "add", &ns]);
                run(
                    "ip",
                    &[
                        "link", "add", &outside, "type", "veth", "peer", "name", &inside,
                    ],
                );
                run("ip", &["link", "set", &inside, "netns", &ns]);
                run("ip", &["link", "set", &outside, "master", &bridge.name]);
                run("ip", &["link", "set", &outside, "up"]);
                let in_ns = |args: &[&str]| {
                    let mut all = vec!["netns", "exec", &ns, "ip"];
                    all.extend_from_slice(args);
                    run("ip", &all);
                };
                in_ns(&["addr", "add", &format!("{address}/24"), "dev", &inside]);
                in_ns(&["link", "set", &inside, "up"]);
                in_ns(&["link", "set", "lo", "up"]);
                (address, 22, Some(ns))
            } else {
                ("127.0.0.1".to_string(), crate::cluster::free_port(), None)
            };
            let config = host_dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress {address}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nAllowTcpForwarding yes\nLogLevel VERBOSE\n",
                    host_key.display(),
                    authorized.display(),
                    host_dir.join("sshd.pid").display()
                ),
            )
            .expect("sshd_config");
            let log = host_dir.join("sshd.log");
            let mut command = match &ns {
                Some(ns) => {
                    let mut c = Command::new(tool("ip"));
                    c.args(["netns", "exec", ns, SSHD]);
                    c
                }
                None => Command::new(SSHD),
            };
            let child = command
                .arg("-D")
                .arg("-f")
                .arg(&config)
                .arg("-E")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting sshd");
            let host = SshHost {
                name: format!("h{idx}"),
                address: address.clone(),
                port,
                install_dir: host_dir.join("kobo"),
                host_key_pub,
                netns: ns,
                dir: host_dir,
                sshd: Some(child),
            };
            fleet.hosts.push(host);
            wait_listening(&address, port, &log);
        }
        fleet
    }

    /// Whether the hosts are network namespaces (else loopback sshds).
    pub fn uses_namespaces(&self) -> bool {
        self.bridge.is_some()
    }

    /// Stops a host's sshd: the host becomes unreachable.
    pub fn stop_sshd(&mut self, idx: usize) {
        if let Some(mut child) = self.hosts[idx].sshd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every sshd and agent log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for host in &self.hosts {
            out.push_str(&format!(
                "--- {} sshd\n{}",
                host.name,
                tail(&host.sshd_log())
            ));
            out.push_str(&format!(
                "--- {} agent\n{}",
                host.name,
                tail(&host.agent_log())
            ));
        }
        out
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(30);
    lines[start..].iter().map(|l| format!("{l}\n")).collect()
}

/// Held while a fleet picks its subnet and names and sets up its network.
static NETWORK_SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Makes fleet ids of one test process distinct.
static FLEETS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let count = FLEETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ((nanos ^ std::process::id().rotate_left(7)) as u16).wrapping_add(count.wrapping_mul(7919))
}

fn kill_group_or_pid(pid: i32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

impl Drop for SshFleet {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            // Agents started through ssh: every process in the namespace, or
            // the supervisor's session on loopback hosts.
            if let Some(ns) = &host.netns {
                if let Ok(output) = Command::new("ip").args(["netns", "pids", ns]).output() {
                    for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                        if let Ok(pid) = pid.parse::<i32>() {
                            kill_group_or_pid(pid);
                        }
                    }
                }
            } else if let Some(pid) = host.supervisor_pid() {
                kill_group_or_pid(pid);
            }
            if let Some(mut child) = host.sshd.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            if let Some(ns) = &host.netns {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
        if let Some(bridge) = &self.bridge {
            let _ = Command::new("ip")
                .args(["link", "del", &bridge.name])
                .status();
        }
    }
}
