//! Scale-in as a Deployment does it, with real agent processes enrolled by
//! key: pods killed outright are lost, then retired after
//! `--retire-lost-after` (gone from `nodes`, certificates refused, audited,
//! their jobs still naming them); a pod sent SIGTERM finishes a short job
//! within its drain deadline and exits 0, or gives a long one back at once
//! so another agent runs it long before the lease TTL would have freed it.

use std::path::Path;
use std::time::{Duration, Instant};

use kobo_protocol::{JobState, NodeStatus};
use kobo_tests::cluster::{AgentSpec, Cluster, job};
use kobo_tests::ledger::{Expect, Ledger};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::enrollment::pod_agent;

fn pid_of(child: &tokio::process::Child) -> Pid {
    Pid::from_raw(child.id().expect("running") as i32)
}

/// An HTTPS client presenting the certificate an agent keeps in `dir`.
fn client_with_identity(cluster: &Cluster, dir: &Path) -> reqwest::Client {
    let mut pem = std::fs::read(dir.join("node.pem")).expect("node.pem");
    pem.push(b'\n');
    pem.extend(std::fs::read(dir.join("node.key")).expect("node.key"));
    let ca = std::fs::read(cluster.ca_path()).expect("ca");
    reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("ca"))
        .identity(reqwest::Identity::from_pem(&pem).expect("identity"))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_killed_outright_are_retired_after_the_bound_and_their_certificates_refused() {
    let mut cluster = Cluster::builder()
        .heartbeat_ms(200)
        .serve_arg("--retire-lost-after")
        .serve_arg("2s")
        .start()
        .await;
    // An ordinary agent (join token) that stays: never retired.
    cluster
        .agent(AgentSpec::new("steady", &["other_kind"]))
        .await;
    let key = cluster
        .client()
        .enroll_key_create("k8s-cpu-", None, Some(10))
        .await
        .expect("enrollment key")
        .key;
    let pods = ["web-1", "web-2", "web-3"];
    let mut children = Vec::new();
    for pod in pods {
        let dir = cluster.data_dir.join(format!("pod-{pod}"));
        children.push((pod_agent(&cluster, &key, pod, &dir), dir));
    }
    let names: Vec<String> = pods.iter().map(|p| format!("k8s-cpu-{p}")).collect();
    cluster
        .wait_until("three pods active", || async {
            cluster.client().nodes().await.is_ok_and(|nodes| {
                names.iter().all(|name| {
                    nodes
                        .iter()
                        .any(|n| &n.node_id == name && n.status == NodeStatus::Active)
                })
            })
        })
        .await;
    let id = cluster
        .submit_prompt("general_query", "before scale-in")
        .await;
    let ran_on = cluster.wait_done(id).await.node_id.expect("a node");
    assert!(names.contains(&ran_on));

    // Scale-in, the hard way: every pod SIGKILLed.
    for (child, _) in &mut children {
        child.start_kill().expect("kill");
        let _ = child.wait().await;
    }
    cluster
        .wait_until("the pods are lost", || async {
            cluster.client().nodes().await.is_ok_and(|nodes| {
                names.iter().all(|name| {
                    nodes
                        .iter()
                        .any(|n| &n.node_id == name && n.status == NodeStatus::Lost)
                })
            })
        })
        .await;
    cluster
        .wait_until(
            "the pods are retired: `nodes` no longer lists them",
            || async {
                cluster.client().nodes().await.is_ok_and(|nodes| {
                    nodes.iter().all(|n| !n.node_id.starts_with("k8s-cpu-"))
                        && nodes.iter().any(|n| n.node_id == "steady")
                })
            },
        )
        .await;

    // Each retirement is audited, and none came before the bound.
    let db = cluster.db();
    let mut stmt = db
        .prepare(
            "SELECT target, detail FROM audit_log WHERE action = 'node.retire' ORDER BY target",
        )
        .expect("prepare");
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let targets: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        targets,
        [
            "node:k8s-cpu-web-1",
            "node:k8s-cpu-web-2",
            "node:k8s-cpu-web-3"
        ]
    );
    for (target, detail) in &rows {
        let lost_ms: i64 = detail
            .strip_prefix("lost for ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{target}: detail {detail:?}"));
        assert!(
            lost_ms >= 2000,
            "{target} retired after {lost_ms} ms, before the bound"
        );
        assert!(detail.ends_with("1 certificates revoked"), "{detail}");
    }
    // History keeps them: the job still names its node, whose row is there.
    let job = cluster.client().job(id).await.expect("job").job;
    assert_eq!(job.node_id.as_deref(), Some(ran_on.as_str()));
    let retired: i64 = db
        .query_row(
            "SELECT count(*) FROM nodes WHERE node_id LIKE 'k8s-cpu-%' AND retired_at IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(retired, 3);

    // A retired pod's certificate is refused, with the reason.
    let (_, dir) = &children[0];
    let answer = client_with_identity(&cluster, dir)
        .post(format!("{}/v1/agent/register", cluster.url()))
        .json(&serde_json::json!({
            "node_id": "k8s-cpu-web-1", "instance_id": "i-2", "region": "ap-northeast-1",
            "capabilities": ["general_query"], "max_workers": 1, "backend": "sim",
        }))
        .send()
        .await
        .expect("answer");
    let status = answer.status();
    let body = answer.text().await.expect("body");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("of node k8s-cpu-web-1 is revoked"), "{body}");
    // The name is free again: a new pod of that name may enroll.
    let again = cluster.data_dir.join("pod-web-1-again");
    let mut pod = pod_agent(&cluster, &key, "web-1", &again);
    cluster
        .wait_until("a new k8s-cpu-web-1 is active", || async {
            cluster.client().nodes().await.is_ok_and(|nodes| {
                nodes
                    .iter()
                    .any(|n| n.node_id == "k8s-cpu-web-1" && n.status == NodeStatus::Active)
            })
        })
        .await;
    let detail: String = cluster
        .db()
        .query_row(
            "SELECT detail FROM audit_log WHERE action = 'node.enroll' AND target = 'node:k8s-cpu-web-1' ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("the new enrollment's audit row");
    assert!(
        detail.ends_with("; 0 older certificates revoked"),
        "retirement revoked them: {detail}"
    );
    pod.start_kill().expect("kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_a_short_job_or_gives_a_long_one_back_at_once() {
    const LEASE_TTL_MS: u64 = 30_000;
    let cluster = Cluster::builder()
        .heartbeat_ms(1000)
        .lease_ttl_ms(LEASE_TTL_MS)
        .start()
        .await;
    let key = cluster
        .client()
        .enroll_key_create("k8s-", None, None)
        .await
        .expect("enrollment key")
        .key;
    let mut ledger = Ledger::new();

    // A short job: the pod's drain (KOBO_DRAIN_TIMEOUT_SECS=5) lets it finish.
    cluster.fake.update_behavior(|b| b.latency_ms = 1000);
    let mut short = pod_agent(&cluster, &key, "short", &cluster.data_dir.join("pod-short"));
    wait_active(&cluster, "k8s-short").await;
    let first = ledger
        .submit(
            cluster.client(),
            job("general_query", "short"),
            Expect::Succeeded,
            Duration::from_secs(10),
        )
        .await
        .expect("submit");
    cluster
        .wait_until("the short job reaches the LLM", || async {
            cluster.fake.requests_to("/api/generate") + cluster.fake.requests_to("/api/chat") == 1
        })
        .await;
    kill(pid_of(&short), Signal::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(20), short.wait())
        .await
        .expect("the pod exits within its drain deadline")
        .expect("wait");
    assert!(status.success(), "exit status {status}");
    let done = cluster.client().job(first).await.expect("job").job;
    assert_eq!((done.state, done.attempts), (JobState::Succeeded, 1));

    // A long job: the LLM holds it past the drain deadline.
    cluster.fake.update_behavior(|b| {
        b.latency_ms = 0;
        b.hold = true;
    });
    let mut long = pod_agent(&cluster, &key, "long", &cluster.data_dir.join("pod-long"));
    wait_active(&cluster, "k8s-long").await;
    let second = ledger
        .submit(
            cluster.client(),
            job("general_query", "long"),
            Expect::Succeeded,
            Duration::from_secs(10),
        )
        .await
        .expect("submit");
    cluster.wait_state(second, JobState::Leased).await;
    let calls =
        || cluster.fake.requests_to("/api/generate") + cluster.fake.requests_to("/api/chat");
    cluster
        .wait_until("the long job reaches the LLM", || async { calls() == 2 })
        .await;
    // Another pod is up before the first goes (as a rolling scale-in has).
    let mut other = pod_agent(&cluster, &key, "other", &cluster.data_dir.join("pod-other"));
    wait_active(&cluster, "k8s-other").await;
    let sigterm = Instant::now();
    kill(pid_of(&long), Signal::SIGTERM).expect("SIGTERM");
    cluster
        .wait_until("the long job is leased by the other pod", || async {
            cluster.client().job(second).await.is_ok_and(|d| {
                d.job.node_id.as_deref() == Some("k8s-other") && d.job.state == JobState::Leased
            })
        })
        .await;
    let handed_over = sigterm.elapsed();
    // The kubelet's grace period (here 10 s): SIGKILL if it is still there.
    if tokio::time::timeout(Duration::from_secs(10), long.wait())
        .await
        .is_err()
    {
        long.start_kill().expect("SIGKILL after the grace period");
        let _ = long.wait().await;
    }
    // By the coordinator's clock: the first lease, the give-back, the new lease.
    let detail = cluster.client().job(second).await.expect("job");
    let leased: Vec<i64> = detail
        .events
        .iter()
        .filter(|e| e.to_state == JobState::Leased)
        .map(|e| e.at)
        .collect();
    assert_eq!(leased.len(), 2, "{:?}", detail.events);
    let gap = leased[1] - leased[0];
    assert!(
        gap < LEASE_TTL_MS as i64 / 3,
        "the job was leased again {gap} ms after its first lease: the lease was not given back at once (TTL {LEASE_TTL_MS} ms)"
    );
    assert!(
        handed_over < Duration::from_millis(LEASE_TTL_MS / 3),
        "{handed_over:?}"
    );
    let log =
        std::fs::read_to_string(cluster.data_dir.join("agent-pod-long.log")).unwrap_or_default();
    assert!(
        log.contains("drain deadline passed; giving the remaining jobs back"),
        "{log}"
    );
    cluster.fake.update_behavior(|b| b.hold = false);
    let done = cluster.wait_done(second).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.node_id.as_deref(), Some("k8s-other"));
    eprintln!(
        "scale-in: long job handed over {handed_over:?} after SIGTERM (lease gap {gap} ms, TTL {LEASE_TTL_MS} ms)"
    );
    ledger.check(&cluster.db_path()).assert_ok("scale-in");
    other.start_kill().expect("kill");
}

async fn wait_active(cluster: &Cluster, node_id: &str) {
    cluster
        .wait_until(&format!("{node_id} active"), || async {
            cluster.client().nodes().await.is_ok_and(|nodes| {
                nodes
                    .iter()
                    .any(|n| n.node_id == node_id && n.status == NodeStatus::Active)
            })
        })
        .await;
}
