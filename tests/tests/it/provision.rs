//! Provisioning end to end: `kobo-coord provision` installs real agents over
//! real SSH (OpenSSH servers started by `kobo_tests::sshd`, in network
//! namespaces when running as root) that enroll with a CSR signed by the
//! running coordinator and take jobs; a second run changes nothing; a config
//! change restarts only its host; a binary that fails to start is rolled back;
//! a wrong host key is refused; unreachable hosts do not stop the others;
//! `remove` stops the agent and revokes its certificate; invalid inventories
//! are refused with file:line:column before anything is touched.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use kobo_protocol::sha256_hex;

use kobo_protocol::{AuditQuery, JobState, NodeStatus};
use kobo_tests::cluster::{Cluster, binary, job};
use kobo_tests::fake_llm::{self, FakeBehavior, FakeLlm};
use kobo_tests::sshd::SshFleet;
use serde_json::Value;

/// Hex digits of the binary's sha256 in `agent_version`.
const BUILD_ID_HEX: usize = 12;
/// The health gate's patience in tests (agents heartbeat every 300 ms here).
const HEALTH_TIMEOUT: &str = "30s";

/// A node card of a test host.
pub(crate) struct Node {
    pub(crate) node_id: &'static str,
    pub(crate) location: &'static str,
    pub(crate) capabilities: &'static [&'static str],
    pub(crate) max_workers: u32,
}

/// The seed's three nodes.
const SEED: [Node; 3] = [
    Node {
        node_id: "tokyo-01",
        location: "ap-northeast-1",
        capabilities: &["code_generation", "heavy_computation"],
        max_workers: 8,
    },
    Node {
        node_id: "osaka-01",
        location: "ap-northeast-3",
        capabilities: &["general_query", "documentation"],
        max_workers: 4,
    },
    Node {
        node_id: "london-01",
        location: "eu-west-2",
        capabilities: &["confidential_processing", "data_analysis"],
        max_workers: 2,
    },
];

/// A coordinator, real sshd hosts, a fake LLM the hosts can reach, and a
/// scratch directory for inventories and binaries.
pub(crate) struct Setup {
    pub(crate) cluster: Cluster,
    pub(crate) fleet: SshFleet,
    /// The fake LLM on the gateway address when hosts are namespaces.
    pub(crate) _fake: Option<FakeLlm>,
    llm_url: String,
    pub(crate) dir: tempfile::TempDir,
}

impl Setup {
    pub(crate) async fn start(n_hosts: usize) -> Setup {
        let fleet = SshFleet::start(n_hosts);
        let listen = if fleet.uses_namespaces() {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        let cluster = Cluster::builder()
            .listen_ip(listen)
            .serve_arg("--san")
            .serve_arg(&fleet.gateway)
            .start()
            .await;
        let (fake, llm_url) = if fleet.uses_namespaces() {
            let addr = format!("{}:0", fleet.gateway).parse().expect("address");
            let fake = fake_llm::start_on(addr, FakeBehavior::default())
                .await
                .expect("fake llm on the gateway");
            let url = fake.url();
            (Some(fake), url)
        } else {
            (None, cluster.fake.url())
        };
        Setup {
            cluster,
            fleet,
            _fake: fake,
            llm_url,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// An inventory of the first `nodes.len()` hosts; `extra(i)` adds lines to host i.
    pub(crate) fn inventory(&self, nodes: &[Node], extra: impl Fn(usize) -> String) -> PathBuf {
        let mut text = format!(
            "defaults:\n  user: root\n  key: {}\n  coordinator: https://{}:{}\n  llm:\n    type: ollama\n    endpoint: {}\nhosts:\n",
            self.fleet.client_key.display(),
            self.fleet.gateway,
            self.cluster.port,
            self.llm_url
        );
        for (idx, node) in nodes.iter().enumerate() {
            let host = &self.fleet.hosts[idx];
            text.push_str(&format!(
                "  {}:\n    host: {}\n    port: {}\n    install_dir: {}\n    location: {}\n    capabilities: [{}]\n    max_workers: {}\n{}",
                node.node_id,
                host.address,
                host.port,
                host.install_dir.display(),
                node.location,
                node.capabilities.join(", "),
                node.max_workers,
                extra(idx)
            ));
        }
        let path = self.dir.path().join("inventory.yaml");
        std::fs::write(&path, text).expect("inventory");
        path
    }

    /// Runs `kobo-coord ARGS` against the test coordinator.
    fn kobo(&self, args: &[&str]) -> Output {
        std::process::Command::new(binary("kobo-coord"))
            .args(args)
            .arg("--data-dir")
            .arg(&self.cluster.data_dir)
            .env_remove("KOBO_URL")
            .env_remove("KOBO_API_KEY")
            .output()
            .expect("running kobo-coord")
    }

    /// `kobo-coord provision ARGS --json`: success, and the host reports by host name.
    fn provision(&self, args: &[&str]) -> (bool, Vec<Value>) {
        let mut all = vec!["provision"];
        all.extend_from_slice(args);
        all.push("--json");
        if !args.contains(&"--health-timeout") {
            all.extend_from_slice(&["--health-timeout", HEALTH_TIMEOUT]);
        }
        let output = self.kobo(&all);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let parsed: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "provision {args:?} printed no JSON ({e}):\n{stdout}\nstderr:\n{}\n{}",
                String::from_utf8_lossy(&output.stderr),
                self.fleet.logs()
            )
        });
        let hosts = parsed["hosts"].as_array().cloned().unwrap_or_default();
        (output.status.success(), hosts)
    }

    /// The fake LLM the hosts' agents call.
    pub(crate) fn fake(&self) -> &FakeLlm {
        self._fake.as_ref().unwrap_or(&self.cluster.fake)
    }

    pub(crate) fn trust(&self, inventory: &Path) -> Output {
        self.kobo(&["hosts", "trust", inventory.to_str().unwrap(), "--yes"])
    }

    pub(crate) async fn node(&self, node_id: &str) -> Option<kobo_protocol::NodeView> {
        self.cluster
            .client()
            .nodes()
            .await
            .expect("nodes")
            .into_iter()
            .find(|n| n.node_id == node_id)
    }
}

/// The report of `host` in a run's reports.
fn report<'a>(reports: &'a [Value], host: &str) -> &'a Value {
    reports
        .iter()
        .find(|r| r["host"] == host)
        .unwrap_or_else(|| panic!("no report for {host}: {reports:#?}"))
}

fn summary(reports: &[Value]) -> Vec<(String, String, String)> {
    reports
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap_or_default().to_string(),
                r["action"].as_str().unwrap_or_default().to_string(),
                r["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// What a node built from `path` reports after `+` in `agent_version`.
fn build_id(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).expect("binary"))[..BUILD_ID_HEX].to_string()
}

pub(crate) fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub(crate) fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // A zombie is not alive: "pid (comm) Z ...".
    !stat.is_empty()
        && !stat
            .rsplit(") ")
            .next()
            .unwrap_or_default()
            .starts_with('Z')
}

#[tokio::test(flavor = "multi_thread")]
async fn provision_installs_agents_that_take_jobs_then_changes_only_what_changed() {
    let setup = Setup::start(3).await;
    // tokyo has a GPU: its `llm` merges with the defaults' type and endpoint;
    // london's commands go through `sudo -n` (root needs no password).
    assert!(
        Path::new("/usr/bin/sudo").exists(),
        "sudo is missing: install it (scripts/install-test-deps does)"
    );
    let gpu = |i: usize| match i {
        0 => "    llm: {gpu: true}\n".to_string(),
        2 => "    become: true\n".to_string(),
        _ => String::new(),
    };
    let inventory = setup.inventory(&SEED, gpu);

    // First contact: each host's key is scanned, shown and pinned.
    let trusted = setup.trust(&inventory);
    assert!(trusted.status.success(), "{}", text(&trusted));
    assert!(text(&trusted).contains("SHA256:"), "{}", text(&trusted));
    let known_hosts = std::fs::read_to_string(setup.cluster.data_dir.join("known_hosts")).unwrap();
    for host in &setup.fleet.hosts {
        assert!(known_hosts.contains(&host.host_key_pub), "{known_hosts}");
    }

    // The plan touches nothing.
    let (ok, plan) = setup.provision(&[inventory.to_str().unwrap(), "--dry-run"]);
    assert!(ok, "{plan:#?}");
    for node in &SEED {
        let r = report(&plan, node.node_id);
        assert_eq!(
            (r["action"].as_str(), r["status"].as_str()),
            (Some("install"), Some("ok"))
        );
        assert_eq!(r["facts"]["os"], "Linux");
    }
    assert!(
        !setup.fleet.hosts[0].install_dir.exists(),
        "the dry run wrote files"
    );

    // Apply: three agents installed, enrolled, checked in with this build.
    let (ok, first) = setup.provision(&[inventory.to_str().unwrap()]);
    assert!(ok, "{first:#?}\n{}", setup.fleet.logs());
    let agent_build = build_id(&binary("kobo-agent"));
    for node in &SEED {
        let r = report(&first, node.node_id);
        assert_eq!(
            (r["action"].as_str(), r["status"].as_str()),
            (Some("install"), Some("changed")),
            "{r:#}"
        );
        let view = setup.node(node.node_id).await.expect("node registered");
        assert_eq!(view.status, NodeStatus::Active);
        assert!(
            view.agent_version.ends_with(&format!("+{agent_build}")),
            "{}",
            view.agent_version
        );
        assert_eq!(view.region, node.location);
        assert_eq!(view.max_workers, node.max_workers);
        assert_eq!(view.gpu, node.node_id == "tokyo-01");
    }
    let mode = |p: PathBuf| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    let install_dir = &setup.fleet.hosts[0].install_dir;
    assert_eq!(mode(install_dir.join("state/node.key")), 0o600);
    assert_eq!(mode(install_dir.join("etc/agent.env")), 0o600);

    // The agents take jobs, each kind on the node that has it.
    for (kind, node_id) in [
        ("code_generation", "tokyo-01"),
        ("documentation", "osaka-01"),
        ("data_analysis", "london-01"),
    ] {
        let id = setup
            .cluster
            .submit_prompt(kind, "hello from provisioning")
            .await;
        let done = setup.cluster.wait_done(id).await;
        assert_eq!(done.state, JobState::Succeeded, "{done:?}");
        assert_eq!(done.node_id.as_deref(), Some(node_id));
    }

    // A second run changes nothing, and says so.
    let pids: Vec<Option<i32>> = setup
        .fleet
        .hosts
        .iter()
        .map(|h| h.supervisor_pid())
        .collect();
    let again = setup.kobo(&["provision", inventory.to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("no changes"), "{}", text(&again));
    assert!(
        text(&again).contains("3 hosts: 0 changed, 3 ok"),
        "{}",
        text(&again)
    );
    let now: Vec<Option<i32>> = setup
        .fleet
        .hosts
        .iter()
        .map(|h| h.supervisor_pid())
        .collect();
    assert_eq!(pids, now);

    // A config change on osaka restarts osaka only.
    let before: Vec<i64> = {
        let mut v = Vec::new();
        for node in &SEED {
            v.push(setup.node(node.node_id).await.unwrap().registered_at);
        }
        v
    };
    let inventory = setup.inventory(&SEED, |i| {
        if i == 1 {
            "    specialization: 軽量タスク処理\n".into()
        } else {
            gpu(i)
        }
    });
    let (ok, third) = setup.provision(&[inventory.to_str().unwrap()]);
    assert!(ok, "{third:#?}");
    assert_eq!(
        summary(&third),
        [
            ("tokyo-01".into(), "nothing".into(), "ok".into()),
            ("osaka-01".into(), "reconfigure".into(), "changed".into()),
            ("london-01".into(), "nothing".into(), "ok".into()),
        ]
    );
    let osaka = setup.node("osaka-01").await.unwrap();
    assert_eq!(osaka.specialization.as_deref(), Some("軽量タスク処理"));
    assert!(osaka.registered_at > before[1]);
    assert_eq!(
        setup.node("tokyo-01").await.unwrap().registered_at,
        before[0]
    );
    assert_eq!(
        setup.node("london-01").await.unwrap().registered_at,
        before[2]
    );
    let after: Vec<Option<i32>> = setup
        .fleet
        .hosts
        .iter()
        .map(|h| h.supervisor_pid())
        .collect();
    assert_eq!((after[0], after[2]), (pids[0], pids[2]));
    assert_ne!(after[1], pids[1]);

    // Every host run is audited, as is every certificate issued.
    let audit = setup
        .cluster
        .client()
        .audit(&AuditQuery::default())
        .await
        .expect("audit");
    let count = |action: &str| audit.entries.iter().filter(|e| e.action == action).count();
    assert_eq!(count("provision.install"), 3);
    assert_eq!(count("provision.nothing"), 5);
    assert_eq!(count("provision.reconfigure"), 1);
    assert_eq!(count("node.certificate"), 3);
    let verified = setup.cluster.client().audit_verify().await.expect("verify");
    assert!(verified.ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_binary_that_fails_to_start_is_rolled_back_and_rollback_restores_the_previous_build() {
    let setup = Setup::start(1).await;
    // The host's key fingerprint is pinned in the inventory: `hosts trust`
    // takes it without asking.
    let pin = setup.fleet.hosts[0].host_key_fingerprint();
    let inventory = setup.inventory(&SEED[..1], |_| format!("    host_key: \"{pin}\"\n"));
    let inv = inventory.to_str().unwrap();
    let trusted = setup.kobo(&["hosts", "trust", inv]);
    assert!(trusted.status.success(), "{}", text(&trusted));
    assert!(
        text(&trusted).contains("matches the inventory's host_key"),
        "{}",
        text(&trusted)
    );
    let (ok, first) = setup.provision(&[inv]);
    assert!(ok, "{first:#?}");
    let v1 = binary("kobo-agent");

    // Build 2: the same agent with other bytes at the end (a new checksum).
    let v2 = setup.dir.path().join("kobo-agent-v2");
    let mut bytes = std::fs::read(&v1).unwrap();
    bytes.extend_from_slice(b"\nkobo-test-build-2\n");
    std::fs::write(&v2, bytes).unwrap();
    make_executable(&v2);
    let (ok, upgrade) = setup.provision(&[inv, "--agent-binary", v2.to_str().unwrap()]);
    assert!(ok, "{upgrade:#?}\n{}", setup.fleet.logs());
    assert_eq!(
        summary(&upgrade)[0],
        ("tokyo-01".into(), "upgrade".into(), "changed".into())
    );
    let version = setup.node("tokyo-01").await.unwrap().agent_version;
    assert!(
        version.ends_with(&format!("+{}", build_id(&v2))),
        "{version}"
    );
    let install_dir = &setup.fleet.hosts[0].install_dir;
    assert_eq!(
        sha256_hex(&std::fs::read(install_dir.join("bin/kobo-agent.prev")).unwrap()),
        sha256_hex(&std::fs::read(&v1).unwrap())
    );

    // `provision rollback` puts build 1 back (and keeps build 2 as .prev).
    let (ok, back) = setup.provision(&["rollback", inv]);
    assert!(ok, "{back:#?}");
    assert_eq!(
        summary(&back)[0],
        ("tokyo-01".into(), "rollback".into(), "changed".into())
    );
    let version = setup.node("tokyo-01").await.unwrap().agent_version;
    assert!(
        version.ends_with(&format!("+{}", build_id(&v1))),
        "{version}"
    );

    // A build that cannot start: the upgrade fails, build 1 comes back by itself.
    let broken = setup.dir.path().join("kobo-agent-broken");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'kobo-agent: this build is broken' >&2\nexit 3\n",
    )
    .unwrap();
    make_executable(&broken);
    let (ok, failed) = setup.provision(&[inv, "--agent-binary", broken.to_str().unwrap()]);
    assert!(!ok, "a failed host must fail the run");
    let r = report(&failed, "tokyo-01");
    assert_eq!(
        (r["action"].as_str(), r["status"].as_str()),
        (Some("upgrade"), Some("failed")),
        "{r:#}"
    );
    let detail = r["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("did not start"), "{detail}");
    assert!(
        detail.contains(&format!(
            "rolled back to build {}, which checked in again",
            build_id(&v1)
        )),
        "{detail}"
    );
    assert_eq!(
        sha256_hex(&std::fs::read(install_dir.join("bin/kobo-agent")).unwrap()),
        sha256_hex(&std::fs::read(&v1).unwrap())
    );
    let node = setup.node("tokyo-01").await.unwrap();
    assert_eq!(node.status, NodeStatus::Active);
    assert!(node.agent_version.ends_with(&format!("+{}", build_id(&v1))));
    let id = setup
        .cluster
        .submit_prompt("code_generation", "still working?")
        .await;
    assert_eq!(setup.cluster.wait_done(id).await.state, JobState::Succeeded);
    let audit = setup
        .cluster
        .client()
        .audit(&AuditQuery::default())
        .await
        .unwrap();
    assert!(
        audit
            .entries
            .iter()
            .any(|e| e.action == "provision.upgrade" && e.outcome == "failed")
    );

    // Settings that keep the agent from checking in (a coordinator port where
    // nothing listens): the gate times out, the previous settings come back.
    let wrong = setup.inventory(&SEED[..1], |_| {
        format!(
            "    host_key: \"{pin}\"\n    coordinator: https://{}:9\n",
            setup.fleet.gateway
        )
    });
    let (ok, failed) = setup.provision(&[wrong.to_str().unwrap(), "--health-timeout", "5s"]);
    assert!(!ok);
    let r = report(&failed, "tokyo-01");
    assert_eq!(
        (r["action"].as_str(), r["status"].as_str()),
        (Some("reconfigure"), Some("failed")),
        "{r:#}"
    );
    let detail = r["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("did not check in with build"), "{detail}");
    assert!(detail.contains("which checked in again"), "{detail}");
    let settings = std::fs::read_to_string(install_dir.join("etc/agent.env")).unwrap();
    assert!(!settings.contains(":9\n"), "{settings}");
    assert_eq!(
        setup.node("tokyo-01").await.unwrap().status,
        NodeStatus::Active
    );
    // And the inventory as it was is up to date again.
    let inventory = setup.inventory(&SEED[..1], |_| format!("    host_key: \"{pin}\"\n"));
    let (ok, again) = setup.provision(&[inventory.to_str().unwrap()]);
    assert!(ok, "{again:#?}");
    assert_eq!(
        summary(&again)[0],
        ("tokyo-01".into(), "nothing".into(), "ok".into())
    );
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_host_keys_are_refused_and_unreachable_hosts_do_not_stop_the_others() {
    let mut setup = Setup::start(3).await;
    let inventory = setup.inventory(&SEED, |_| String::new());
    let inv = inventory.to_str().unwrap();
    assert!(setup.trust(&inventory).status.success());

    // tokyo's trusted key is replaced by another host's: a man in the middle.
    let known_hosts = setup.cluster.data_dir.join("known_hosts");
    let text_before = std::fs::read_to_string(&known_hosts).unwrap();
    let (h0, h1) = (&setup.fleet.hosts[0], &setup.fleet.hosts[1]);
    let forged = text_before.replace(&h0.host_key_pub, &h1.host_key_pub);
    assert_ne!(forged, text_before);
    std::fs::write(&known_hosts, forged).unwrap();
    // london is down.
    setup.fleet.stop_sshd(2);

    let (ok, reports) = setup.provision(&[inv]);
    assert!(!ok);
    let tokyo = report(&reports, "tokyo-01");
    assert_eq!(tokyo["status"], "unreachable", "{tokyo:#}");
    assert!(
        tokyo["detail"]
            .as_str()
            .unwrap()
            .contains("host key verification failed"),
        "{tokyo:#}"
    );
    assert!(
        !setup.fleet.hosts[0].install_dir.exists(),
        "a refused host was touched"
    );
    let london = report(&reports, "london-01");
    assert_eq!(london["status"], "unreachable", "{london:#}");
    let osaka = report(&reports, "osaka-01");
    assert_eq!(
        (osaka["action"].as_str(), osaka["status"].as_str()),
        (Some("install"), Some("changed")),
        "{osaka:#}"
    );
    assert_eq!(
        setup.node("osaka-01").await.unwrap().status,
        NodeStatus::Active
    );
    assert!(setup.node("tokyo-01").await.is_none());

    // A pinned key that is not the host's is refused before connecting.
    let london_pin = setup.fleet.hosts[2].host_key_fingerprint();
    let pinned = setup.inventory(&SEED, |i| {
        if i == 0 {
            format!("    host_key: \"{london_pin}\"\n")
        } else {
            String::new()
        }
    });
    let (ok, refused) = setup.provision(&[pinned.to_str().unwrap(), "--limit", "tokyo-01"]);
    assert!(!ok);
    let tokyo = report(&refused, "tokyo-01");
    assert_eq!(tokyo["status"], "unreachable", "{tokyo:#}");
    assert!(
        tokyo["detail"]
            .as_str()
            .unwrap()
            .contains("pinned host key"),
        "{tokyo:#}"
    );
    let inventory = setup.inventory(&SEED, |_| String::new());
    let inv = inventory.to_str().unwrap();

    // `hosts trust` does not quietly accept the changed key either.
    let retrust = setup.kobo(&["hosts", "trust", inv, "--yes", "--limit", "tokyo-01"]);
    assert!(!retrust.status.success());
    assert!(text(&retrust).contains("CHANGED"), "{}", text(&retrust));

    // With batches of one and no failure allowed, the rollout stops at tokyo.
    let (ok, stopped) = setup.provision(&[
        inv,
        "--batch",
        "1",
        "--max-fail",
        "0",
        "--limit",
        "tokyo-01,osaka-01",
    ]);
    assert!(!ok);
    assert_eq!(
        summary(&stopped),
        [
            ("tokyo-01".into(), "nothing".into(), "unreachable".into()),
            ("osaka-01".into(), "nothing".into(), "skipped".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_stops_the_agent_and_revokes_its_certificate() {
    let setup = Setup::start(1).await;
    // A whole public key pinned in the inventory is trusted without `hosts trust`.
    let pin = setup.fleet.hosts[0].host_key_pub.clone();
    let inventory = setup.inventory(&SEED[..1], |_| format!("    host_key: \"{pin}\"\n"));
    let inv = inventory.to_str().unwrap();
    let (ok, first) = setup.provision(&[inv]);
    assert!(ok, "{first:#?}");
    let host = &setup.fleet.hosts[0];
    let pid = host.supervisor_pid().expect("a supervisor");
    assert!(alive(pid));

    let (ok, removed) = setup.provision(&["remove", inv]);
    assert!(ok, "{removed:#?}");
    let r = report(&removed, "tokyo-01");
    assert_eq!(
        (r["action"].as_str(), r["status"].as_str()),
        (Some("remove"), Some("changed")),
        "{r:#}"
    );
    assert!(
        r["detail"]
            .as_str()
            .unwrap()
            .contains("1 certificates revoked"),
        "{r:#}"
    );
    assert!(!alive(pid), "the supervisor still runs");
    assert!(!host.install_dir.exists());
    let unrevoked: i64 = setup
        .cluster
        .db()
        .query_row(
            "SELECT count(*) FROM certificates WHERE node_id = 'tokyo-01' AND revoked_at IS NULL",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(unrevoked, 0);
    let audit = setup
        .cluster
        .client()
        .audit(&AuditQuery::default())
        .await
        .unwrap();
    assert!(audit.entries.iter().any(|e| e.action == "node.revoke"));
    assert!(
        audit
            .entries
            .iter()
            .any(|e| e.action == "provision.remove" && e.outcome == "ok")
    );
    // The node's jobs wait with a visible reason: no live node can run them.
    let id = setup
        .cluster
        .client()
        .submit(&job("code_generation", "anyone?"))
        .await
        .unwrap()
        .id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        setup.cluster.client().job(id).await.unwrap().job.state,
        JobState::Queued
    );
}

#[test]
fn invalid_inventories_are_refused_with_positions_before_anything_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.yaml");
    std::fs::write(
        &path,
        "defaults:\n  location: r\n  capabilities: [q]\nhosts:\n  a: {host: 10.0.0.1, node_id: n1, prot: 22}\n  b: {host: 10.0.0.2, node_id: n1}\n  c: {host: '-oProxyCommand=sh', port: 70000}\n  d: {host: 10.0.0.4, llm: {type: gpt5}}\n",
    )
    .unwrap();
    // No coordinator runs: the inventory is refused before any connection.
    let output = std::process::Command::new(binary("kobo-coord"))
        .args([
            "provision",
            path.to_str().unwrap(),
            "--dry-run",
            "--url",
            "https://127.0.0.1:9",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file = path.display().to_string();
    for expected in [
        format!("{file}:5:36: unknown key `prot`"),
        format!("{file}:6:3: duplicate node id `n1`"),
        format!("{file}:7:13: `host` of host `c`: expected a DNS name"),
        format!("{file}:7:40: `port` of host `c`: expected an integer from 1 to 65535"),
        format!("{file}:8:35: `llm.type` of host `d`: unknown LLM type `gpt5`"),
    ] {
        assert!(stderr.contains(&expected), "{expected}\nnot in:\n{stderr}");
    }
    assert!(
        stderr.contains("invalid inventory (5 problems)"),
        "{stderr}"
    );
}
