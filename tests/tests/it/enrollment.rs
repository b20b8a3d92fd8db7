//! Enrollment keys: a reusable key bound to a node-name prefix enrolls
//! exactly as many nodes as its maximum (also when they race), refuses a
//! wrong prefix, a live name, an expired or revoked key with a 4xx naming
//! the field, audits each enrollment and refusal, and is stored hashed. An
//! agent started with only `KOBO_ENROLL_KEY` and `KOBO_NODE_NAME_SUFFIX`
//! (a pod) enrolls as prefix + suffix and runs a job.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use kobo_agent::identity::{self, EnrollName};
use kobo_protocol::{JobState, NodeStatus};
use kobo_tests::cluster::{Cluster, binary};
use tokio::process::{Child, Command};

/// A plain `kobo-agent` start as a pod runs it: everything from the
/// environment, no certificate yet, the enrollment key and the pod name.
pub(crate) fn pod_agent(cluster: &Cluster, key: &str, pod: &str, state_dir: &Path) -> Child {
    let log = cluster.data_dir.join(format!("agent-pod-{pod}.log"));
    Command::new(binary("kobo-agent"))
        .env_clear()
        .env("RUST_LOG", "info,kobo_agent=debug")
        .env("KOBO_COORDINATOR", cluster.url())
        .env("KOBO_ENROLL_KEY", key)
        .env("KOBO_NODE_NAME_SUFFIX", pod)
        .env("KOBO_AGENT_DIR", state_dir)
        .env("KOBO_REGION", "ap-northeast-1")
        .env("KOBO_CAPABILITIES", "general_query")
        .env("KOBO_LLM", "ollama")
        .env("KOBO_LLM_ENDPOINT", cluster.fake.url())
        .env("KOBO_DRAIN_TIMEOUT_SECS", "5")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("agent log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start kobo-agent")
}

/// `kobo-coord ARGS --data-dir …`: (success, stdout, stderr).
async fn kobo_coord(cluster: &Cluster, args: &[&str]) -> (bool, String, String) {
    let output = cluster.kobo_coord(args).await;
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn audit_count(cluster: &Cluster, action: &str, outcome: &str, detail_like: &str) -> i64 {
    cluster
        .db()
        .query_row(
            "SELECT count(*) FROM audit_log WHERE action = ?1 AND outcome = ?2 AND coalesce(detail, '') LIKE ?3",
            [action, outcome, detail_like],
            |r| r.get(0),
        )
        .expect("count audit rows")
}

/// Enrolls in-process as `name` with `key`; the refusal's message if refused.
async fn try_enroll(cluster: &Cluster, key: &str, name: EnrollName) -> Result<String, String> {
    let label = match &name {
        EnrollName::Suffix(s) | EnrollName::NodeId(s) => s.clone(),
    };
    let dir = cluster.data_dir.join("enrolled").join(label);
    identity::enroll(&cluster.url(), key, &name, &dir)
        .await
        .map_err(|err| format!("{err:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_keys_enroll_up_to_their_maximum_and_refuse_clearly() {
    let cluster = Cluster::builder().start().await;
    // Created with the CLI, as an operator would; the secret is on stdout once.
    let (ok, key, err) = kobo_coord(
        &cluster,
        &["enroll-key", "create", "--prefix", "k8s-gpu-", "--max", "3"],
    )
    .await;
    assert!(ok, "enroll-key create: {err}");
    let key = key.trim().to_string();
    assert!(key.starts_with("kobo-enroll."), "{key}");
    assert!(err.contains("at most 3 nodes"), "{err}");

    // Five pods race for three places: exactly three get in.
    let racer = |i: u32| try_enroll(&cluster, &key, EnrollName::Suffix(format!("pod-{i}")));
    let (r0, r1, r2, r3, r4) = tokio::join!(racer(0), racer(1), racer(2), racer(3), racer(4));
    let results = [r0, r1, r2, r3, r4];
    let enrolled: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let refused: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(enrolled.len(), 3, "{results:?}");
    for name in &enrolled {
        assert!(
            name.starts_with("k8s-gpu-pod-"),
            "named prefix + suffix: {name}"
        );
    }
    for why in &refused {
        assert!(
            why.contains("403")
                && why.contains("key: enrollment key")
                && why.contains("maximum of 3"),
            "{why}"
        );
    }
    // And the sixth, alone, is refused too: the count is exact, not racy.
    let sixth = try_enroll(&cluster, &key, EnrollName::Suffix("pod-9".into())).await;
    assert!(
        sixth.as_ref().is_err_and(|e| e.contains("maximum of 3")),
        "{sixth:?}"
    );

    // An unlimited key for the rest.
    let open = cluster
        .client()
        .enroll_key_create("k8s-gpu-", None, None)
        .await
        .expect("create");
    let wrong = try_enroll(&cluster, &open.key, EnrollName::NodeId("cpu-1".into())).await;
    assert!(
        wrong.as_ref().is_err_and(|e| e.contains("403")
            && e.contains("node_id:")
            && e.contains("does not start with the enrollment key's prefix \"k8s-gpu-\"")),
        "{wrong:?}"
    );
    let bad_label = try_enroll(&cluster, &open.key, EnrollName::Suffix("Pod_A".into())).await;
    assert!(
        bad_label
            .as_ref()
            .is_err_and(|e| e.contains("400") && e.contains("name_suffix:")),
        "{bad_label:?}"
    );

    // A pod: a plain agent with the key and its name in the environment
    // enrolls as prefix + pod name and runs a job.
    let state = cluster.data_dir.join("pod-a");
    let mut pod = pod_agent(&cluster, &open.key, "web-5d8f-abcde", &state);
    cluster
        .wait_until(
            "the pod's agent is active as k8s-gpu-web-5d8f-abcde",
            || async {
                cluster.client().nodes().await.is_ok_and(|nodes| {
                    nodes.iter().any(|n| {
                        n.node_id == "k8s-gpu-web-5d8f-abcde" && n.status == NodeStatus::Active
                    })
                })
            },
        )
        .await;
    let id = cluster.submit_prompt("general_query", "from a pod").await;
    let job = cluster.wait_done(id).await;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.node_id.as_deref(), Some("k8s-gpu-web-5d8f-abcde"));
    // The name is taken while that node lives.
    let taken = try_enroll(
        &cluster,
        &open.key,
        EnrollName::Suffix("web-5d8f-abcde".into()),
    )
    .await;
    assert!(
        taken.as_ref().is_err_and(|e| e.contains("409")
            && e.contains("name_suffix: node k8s-gpu-web-5d8f-abcde is enrolled and live")),
        "{taken:?}"
    );
    // A restarted container keeps its certificate and its name: no second enrollment.
    pod.start_kill().expect("kill pod agent");
    let _ = pod.wait().await;
    let before = audit_count(&cluster, "node.enroll", "ok", "%enrollment key%");
    let mut pod = pod_agent(&cluster, &open.key, "web-5d8f-abcde", &state);
    let id = cluster
        .submit_prompt("general_query", "after a restart")
        .await;
    assert_eq!(
        cluster.wait_done(id).await.node_id.as_deref(),
        Some("k8s-gpu-web-5d8f-abcde")
    );
    assert_eq!(
        audit_count(&cluster, "node.enroll", "ok", "%enrollment key%"),
        before
    );
    pod.start_kill().expect("kill pod agent");
    let _ = pod.wait().await;

    // Expiry.
    let brief = cluster
        .client()
        .enroll_key_create("k8s-gpu-", Some(Duration::from_millis(1)), None)
        .await
        .expect("create");
    let expires_at = brief.view.expires_at.expect("an expiry");
    while kobo_queue::store::unix_now_ms() <= expires_at {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let expired = try_enroll(&cluster, &brief.key, EnrollName::Suffix("late".into())).await;
    assert!(
        expired.as_ref().is_err_and(|e| e.contains("403")
            && e.contains("key: enrollment key")
            && e.contains("expired")),
        "{expired:?}"
    );

    // Revocation, with the CLI.
    let (ok, out, err) = kobo_coord(&cluster, &["enroll-key", "revoke", &open.view.id]).await;
    assert!(ok && out.contains("revoked"), "{out}{err}");
    let revoked = try_enroll(&cluster, &open.key, EnrollName::Suffix("pod-z".into())).await;
    assert!(
        revoked
            .as_ref()
            .is_err_and(|e| e.contains("403") && e.contains("is revoked")),
        "{revoked:?}"
    );
    let (ok, _, err) = kobo_coord(&cluster, &["enroll-key", "revoke", &open.view.id]).await;
    assert!(!ok && err.contains("already revoked"), "{err}");

    // The listing counts enrollments; never a secret.
    let (ok, listing, err) = kobo_coord(&cluster, &["enroll-key", "list", "--json"]).await;
    assert!(ok, "{err}");
    let keys: Vec<kobo_protocol::EnrollKeyView> = serde_json::from_str(&listing).expect("json");
    assert_eq!(keys.len(), 3);
    assert_eq!((keys[0].enrollments, keys[0].max_enrollments), (3, Some(3)));
    assert_eq!(keys[1].enrollments, 1, "the pod, once");
    assert!(keys[1].revoked_at.is_some());
    let secret = key.rsplit('.').next().expect("secret");
    assert!(!listing.contains(secret));
    let db = std::fs::read(cluster.db_path()).expect("db");
    let wal = std::fs::read(cluster.db_path().with_extension("db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the key's secret is stored only hashed"
        );
    }

    // Every enrollment and every refusal is in the audit log.
    assert_eq!(
        audit_count(&cluster, "enrollkey.create", "ok", "prefix=k8s-gpu-%"),
        3
    );
    assert_eq!(audit_count(&cluster, "enrollkey.revoke", "ok", "%"), 1);
    assert_eq!(
        audit_count(&cluster, "node.enroll", "ok", "%via enrollment key%"),
        4
    );
    assert_eq!(
        audit_count(&cluster, "node.enroll", "denied", "%maximum of 3%"),
        3
    );
    for why in [
        "%does not start with%",
        "%enrolled and live%",
        "%expired%",
        "%is revoked%",
    ] {
        assert_eq!(
            audit_count(&cluster, "node.enroll", "denied", why),
            1,
            "{why}"
        );
    }
}
