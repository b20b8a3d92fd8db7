//! `kobo-coord autoscale` end to end, as a real process next to a real
//! coordinator. A command pool: a growing queue runs the `start` script
//! (with the pool, host and node id in its environment), the agent it
//! stands for takes the jobs, idleness drains the node and runs `stop`;
//! a failing `start` is retried only after the backoff; every action and
//! failure is an audit row. `--dry-run` prints decisions and runs nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use kobo_protocol::{JobState, NodeStatus};
use kobo_tests::cluster::{AgentSpec, Cluster, binary, job};
use nix::sys::signal::Signal;

/// The autoscaler's pause between looks in tests.
pub(crate) const INTERVAL: &str = "100ms";

/// A running `kobo-coord autoscale`, killed when dropped.
pub(crate) struct Autoscaler {
    child: Child,
    pub(crate) log: PathBuf,
}

impl Autoscaler {
    pub(crate) fn start(cluster: &Cluster, inventory: &Path, extra: &[&str]) -> Autoscaler {
        let log = inventory.with_extension("autoscale.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary("kobo-coord"))
            .arg("autoscale")
            .arg(inventory)
            .args(["--interval", INTERVAL])
            .args(extra)
            .arg("--data-dir")
            .arg(&cluster.data_dir)
            .env_remove("KOBO_URL")
            .env_remove("KOBO_API_KEY")
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("starting kobo-coord autoscale");
        Autoscaler { child, log }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Autoscaler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The autoscaler's audit rows: (action, outcome, detail), oldest first.
pub(crate) fn scale_rows(cluster: &Cluster) -> Vec<(String, String, String)> {
    let db = cluster.db();
    let mut stmt = db
        .prepare("SELECT action, outcome, coalesce(detail, '') FROM audit_log WHERE action LIKE 'provision.scale-%' ORDER BY id")
        .expect("query");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn count(cluster: &Cluster, sql: &str) -> i64 {
    cluster
        .db()
        .query_row(sql, [], |r| r.get(0))
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_pool_starts_for_a_queue_stops_when_idle_and_backs_off_after_failures() {
    let mut cluster = Cluster::builder().start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let calls = dir.path().join("calls");
    let fail = dir.path().join("fail");
    // Each call is one line: verb, then the environment it was given.
    let record = format!(
        "echo \"$KOBO_ACTION $KOBO_POOL $KOBO_HOST $KOBO_NODE_ID $(date +%s%3N)\" >> {}",
        calls.display()
    );
    let inventory = dir.path().join("inventory.yaml");
    std::fs::write(
        &inventory,
        format!(
            "hosts: {{}}\npools:\n  - name: cloud\n    min: 0\n    max: 1\n    kind: general_query\n    slots: 2\n    idle_after: 1s\n    cooldown: 1s\n    command:\n      start: '{record}; [ ! -e {fail} ]'\n      stop: '{record}'\n",
            fail = fail.display()
        ),
    )
    .expect("inventory");

    // --dry-run: the decision and its reason, and no script runs.
    cluster.submit(&job("general_query", "dry")).await;
    let dry = Command::new(binary("kobo-coord"))
        .arg("autoscale")
        .arg(&inventory)
        .args(["--dry-run", "--once", "--data-dir"])
        .arg(&cluster.data_dir)
        .env_remove("KOBO_URL")
        .env_remove("KOBO_API_KEY")
        .stdin(Stdio::null())
        .output()
        .expect("dry run");
    let said = String::from_utf8_lossy(&dry.stdout).to_string();
    assert!(
        dry.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(
        said.contains("pool cloud: backlog 1, 2 slots/host, wants 1 (min 0, max 1): start cloud-1"),
        "{said}"
    );
    assert!(
        said.contains("would start cloud-1 (pool cloud): backlog 1"),
        "{said}"
    );
    assert!(lines(&calls).is_empty(), "the dry run ran a script");
    assert!(
        scale_rows(&cluster).is_empty(),
        "the dry run audited an action"
    );

    // A growing queue: the start script runs with the pool's environment.
    for idx in 0..4 {
        cluster
            .submit(&job("general_query", &format!("burst {idx}")))
            .await;
    }
    let autoscaler = Autoscaler::start(&cluster, &inventory, &[]);
    cluster
        .wait_until("the start script ran", || async {
            !lines(&calls).is_empty()
        })
        .await;
    let first = lines(&calls)[0].clone();
    assert!(first.starts_with("start cloud cloud-1 cloud-1 "), "{first}");

    // The "VM" boots: its agent takes every job.
    let agent = cluster
        .agent(AgentSpec::new("cloud-1", &["general_query"]).max_workers(2))
        .await;
    cluster
        .wait_until("every job ran", || async {
            count(
                &cluster,
                "SELECT count(*) FROM jobs WHERE state = 'succeeded'",
            ) == 5
        })
        .await;
    assert_eq!(
        count(
            &cluster,
            "SELECT count(*) FROM jobs WHERE node_id = 'cloud-1'"
        ),
        5
    );

    // Idle for idle_after: drained first, then stopped.
    cluster
        .wait_until(
            "the stop script ran and its scale-down was audited",
            || async {
                lines(&calls)
                .iter()
                .any(|l| l.starts_with("stop cloud cloud-1 cloud-1 "))
                // The audit row follows the script's exit.
                && scale_rows(&cluster)
                    .iter()
                    .any(|(a, ..)| a == "provision.scale-down")
            },
        )
        .await;
    let node = cluster
        .client()
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .find(|n| n.node_id == "cloud-1")
        .expect("node");
    assert_eq!(node.status, NodeStatus::Drained, "drained before the stop");
    let drain_rows = count(
        &cluster,
        "SELECT count(*) FROM audit_log WHERE action = 'node.drain' AND target = 'node:cloud-1'",
    );
    assert_eq!(drain_rows, 1);
    cluster.agents[agent].signal(Signal::SIGKILL);
    let rows = scale_rows(&cluster);
    assert_eq!(
        rows.iter()
            .map(|(a, o, _)| (a.as_str(), o.as_str()))
            .collect::<Vec<_>>(),
        [("provision.scale-up", "ok"), ("provision.scale-down", "ok")],
        "{rows:#?}"
    );
    assert!(rows[0].2.contains("pool cloud"), "{rows:#?}");

    // Starts that fail: audited, and retried only after a doubling wait.
    std::fs::write(&fail, "").expect("fail flag");
    let before = lines(&calls).len();
    let job_id = cluster
        .submit(&job("general_query", "after the stop"))
        .await;
    cluster
        .wait_until("two failed starts", || async {
            scale_rows(&cluster)
                .iter()
                .filter(|(a, o, _)| a == "provision.scale-up" && o == "failed")
                .count()
                >= 2
        })
        .await;
    let starts: Vec<u64> = lines(&calls)[before..]
        .iter()
        .filter(|l| l.starts_with("start "))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(starts.len() >= 2, "{starts:?}");
    let gap = starts[1] - starts[0];
    assert!(
        gap >= 5_000,
        "the second attempt waited the backoff (5 s), not {gap} ms"
    );
    let failed = scale_rows(&cluster);
    assert!(
        failed
            .iter()
            .any(|(_, o, d)| o == "failed" && d.contains("the start script failed")),
        "{failed:#?}"
    );
    assert!(
        autoscaler.log_text().contains("FAILED"),
        "{}",
        autoscaler.log_text()
    );
    let waiting = cluster.client().job(job_id).await.expect("job");
    assert_eq!(waiting.job.state, JobState::Queued);
}

/// Two standby hosts behind real sshds, both general_query, 2 slots each.
const STANDBY: [crate::provision::Node; 2] = [
    crate::provision::Node {
        node_id: "standby-1",
        location: "ap-northeast-1",
        capabilities: &["general_query"],
        max_workers: 2,
    },
    crate::provision::Node {
        node_id: "standby-2",
        location: "ap-northeast-1",
        capabilities: &["general_query"],
        max_workers: 2,
    },
];

#[tokio::test(flavor = "multi_thread")]
async fn standby_hosts_start_over_ssh_for_a_queue_survive_a_killed_host_and_stop_when_idle() {
    use kobo_tests::ledger::{Expect, Ledger};
    use std::time::Duration;

    let mut setup = crate::provision::Setup::start(2).await;
    let inventory = setup.inventory(&STANDBY, |_| String::new());
    let mut text = std::fs::read_to_string(&inventory).expect("inventory");
    text.push_str(
        "pools:\n  - name: standby\n    min: 0\n    max: 2\n    hosts: [standby-1, standby-2]\n    kind: general_query\n    idle_after: 1s\n    cooldown: 1s\n",
    );
    std::fs::write(&inventory, text).expect("inventory");
    let trusted = setup.trust(&inventory);
    assert!(
        trusted.status.success(),
        "{}",
        crate::provision::text(&trusted)
    );

    // The calls wait at the LLM until the test lets them go.
    setup.fake().update_behavior(|b| b.hold = true);
    let mut ledger = Ledger::new();
    ledger
        .submit_many(
            setup.cluster.client(),
            ("general_query", "standby"),
            6,
            Expect::Succeeded,
            Duration::from_secs(5),
        )
        .await
        .expect("submits");
    let autoscaler = Autoscaler::start(
        &setup.cluster,
        &inventory,
        &["--health-timeout", "30s", "--connect-timeout", "2s"],
    );

    // Backlog 6 at 2 slots wants 3 hosts: both (max 2) are installed and started.
    setup
        .cluster
        .wait_until("both standby hosts run two jobs each", || async {
            setup.fake().in_flight() == 4
        })
        .await;
    for node in ["standby-1", "standby-2"] {
        let view = setup.node(node).await.expect("registered");
        assert_eq!(
            (view.status, view.running),
            (NodeStatus::Active, 2),
            "{node}"
        );
    }

    // standby-1 dies with its jobs: its sshd and its agent's whole session.
    let on_first: Vec<i64> = {
        let db = setup.cluster.db();
        let mut stmt = db
            .prepare("SELECT id FROM jobs WHERE state = 'leased' AND node_id = 'standby-1'")
            .expect("query");
        stmt.query_map([], |r| r.get(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    assert_eq!(on_first.len(), 2);
    setup.fleet.stop_sshd(0);
    let supervisor = setup.fleet.hosts[0].supervisor_pid().expect("supervised");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(-supervisor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the host's agent session");
    setup
        .cluster
        .wait_until("standby-1 is lost", || async {
            setup
                .node("standby-1")
                .await
                .is_some_and(|n| n.status == NodeStatus::Lost)
        })
        .await;
    // The backlog still wants two hosts: the restart of standby-1 fails
    // (no sshd) and is audited; then the calls are let go.
    setup
        .cluster
        .wait_until("a failed restart of standby-1", || async {
            scale_rows(&setup.cluster).iter().any(|(a, o, d)| {
                a == "provision.scale-up" && o == "failed" && d.contains("host standby-1")
            })
        })
        .await;
    setup.fake().update_behavior(|b| b.hold = false);
    setup
        .cluster
        .wait_until("every job succeeded", || async {
            count(
                &setup.cluster,
                "SELECT count(*) FROM jobs WHERE state = 'succeeded'",
            ) == 6
        })
        .await;
    ledger
        .check(&setup.cluster.db_path())
        .assert_ok("standby hosts, one killed mid-job");
    for id in &on_first {
        let node: String = setup
            .cluster
            .db()
            .query_row(
                "SELECT node_id FROM job_attempts WHERE job_id = ?1 AND outcome = 'succeeded'",
                [id],
                |r| r.get(0),
            )
            .expect("the succeeded attempt");
        assert_eq!(node, "standby-2", "job {id} was done elsewhere");
    }

    // Idle: standby-2 is drained, then its agent stopped over SSH.
    setup
        .cluster
        .wait_until("standby-2 stopped", || async {
            scale_rows(&setup.cluster).iter().any(|(a, o, d)| {
                a == "provision.scale-down" && o == "ok" && d.contains("host standby-2")
            })
        })
        .await;
    let stopped = setup.node("standby-2").await.expect("node");
    assert_eq!(
        stopped.status,
        NodeStatus::Drained,
        "drained before the stop"
    );
    assert!(
        setup.fleet.hosts[1]
            .supervisor_pid()
            .is_none_or(|pid| !crate::provision::alive(pid)),
        "standby-2's agent still runs"
    );
    let rows = scale_rows(&setup.cluster);
    for host in ["standby-1", "standby-2"] {
        assert!(
            rows.iter().any(|(a, o, d)| a == "provision.scale-up"
                && o == "ok"
                && d.contains(&format!("host {host}"))),
            "{host} started: {rows:#?}\n{}",
            autoscaler.log_text()
        );
    }
}
