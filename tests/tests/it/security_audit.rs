//! The audit log and the admin CLI, through the real `kobo-coord` binary:
//! `init` (keys and files, bring-your-own CA), `apikey`, `token`, `node
//! revoke`, `audit` and `audit verify`, which catches a tampered row.

use std::path::Path;
use std::process::{Command, Output};

use kobo_protocol::{AccessRole, AuditList};
use kobo_tests::cluster::{AgentSpec, Cluster, binary};

fn kobo_coord(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(binary("kobo-coord"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("KOBO_API_KEY")
        .env_remove("KOBO_URL")
        .output()
        .expect("run kobo-coord")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "kobo-coord failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("file").permissions().mode() & 0o777
}

#[test]
fn init_creates_private_keys_once_and_imports_a_ca() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let first = ok(&kobo_coord(&data, &["init"]));
    let key = std::fs::read_to_string(data.join("admin.key")).expect("admin.key");
    assert!(
        first.contains(key.trim()),
        "the admin key is printed once: {first}"
    );
    for secret in ["ca.key", "server.key", "hmac.key", "data.key", "admin.key"] {
        assert_eq!(mode(&data.join(secret)), 0o600, "{secret}");
    }
    let again = ok(&kobo_coord(&data, &["init"]));
    assert!(
        again.contains("already initialised") && !again.contains(key.trim()),
        "{again}"
    );

    // Bring your own CA.
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "corp CA");
    let ca = params.self_signed(&ca_key).expect("ca");
    std::fs::write(dir.path().join("corp.pem"), ca.pem()).expect("write");
    std::fs::write(dir.path().join("corp.key"), ca_key.serialize_pem()).expect("write");
    let own = dir.path().join("own");
    let out = kobo_coord(
        &own,
        &[
            "init",
            "--ca-cert",
            &dir.path().join("corp.pem").display().to_string(),
            "--ca-key",
            &dir.path().join("corp.key").display().to_string(),
        ],
    );
    ok(&out);
    assert_eq!(
        std::fs::read_to_string(own.join("ca.pem")).expect("ca"),
        ca.pem()
    );
    // A data directory with another CA refuses a different one.
    let clash = kobo_coord(
        &data,
        &[
            "init",
            "--ca-cert",
            &dir.path().join("corp.pem").display().to_string(),
            "--ca-key",
            &dir.path().join("corp.key").display().to_string(),
        ],
    );
    assert!(!clash.status.success());
    assert!(String::from_utf8_lossy(&clash.stderr).contains("different CA"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_every_change_and_detects_tampering() {
    let mut cluster = Cluster::builder().start().await;
    let data = cluster.data_dir.clone();
    // Keys through the CLI, with the local admin key found in the data dir.
    let created = ok(&kobo_coord(
        &data,
        &[
            "apikey", "create", "--role", "submit", "--name", "ci", "--json",
        ],
    ));
    let created: serde_json::Value = serde_json::from_str(&created).expect("json");
    let key_id = created["id"].as_str().expect("id").to_string();
    assert!(created["key"].as_str().expect("key").starts_with("kobo_"));
    let listed = ok(&kobo_coord(&data, &["apikey", "list"]));
    assert!(
        listed.contains(&key_id) && listed.contains("submit"),
        "{listed}"
    );
    assert!(
        !listed.contains(created["key"].as_str().expect("key")),
        "secrets are never listed"
    );
    let token = ok(&kobo_coord(
        &data,
        &["token", "create", "--node", "n9", "--ttl", "10m"],
    ));
    assert!(token.trim().starts_with("kobo-join."), "{token}");

    // Enrollment, a job submitted and cancelled, a denied key, a revocation.
    cluster
        .agent(AgentSpec::new("alpha", &["other_kind"]))
        .await;
    let (submitter, _) = cluster.client_with_role(AccessRole::Submit).await;
    let id = submitter
        .submit(&kobo_tests::cluster::job("general_query", "audit me"))
        .await
        .expect("submit")
        .id;
    submitter.cancel(id).await.expect("cancel");
    ok(&kobo_coord(&data, &["apikey", "revoke", &key_id]));
    let denied = Command::new(binary("kobo-coord"))
        .args(["jobs", "--data-dir"])
        .arg(&data)
        .args(["--api-key", "kobo_0000000000000000_0000000000000000000000000000000000000000000000000000000000000000"])
        .output()
        .expect("run");
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("401"));
    ok(&kobo_coord(&data, &["node", "revoke", "alpha"]));

    let audit: AuditList =
        serde_json::from_str(&ok(&kobo_coord(&data, &["audit", "--json"]))).expect("audit json");
    for action in [
        "apikey.create",
        "apikey.revoke",
        "token.create",
        "node.enroll",
        "job.submit",
        "job.cancel",
        "node.revoke",
    ] {
        assert!(
            audit
                .entries
                .iter()
                .any(|e| e.action == action && e.outcome == "ok"),
            "no {action} row in {:#?}",
            audit.entries.iter().map(|e| &e.action).collect::<Vec<_>>()
        );
    }
    let denial = audit
        .entries
        .iter()
        .find(|e| e.action == "auth.apikey" && e.outcome == "denied")
        .expect("the bad key was audited");
    assert!(
        denial
            .source
            .as_deref()
            .is_some_and(|s| s.starts_with("127.0.0.1:"))
    );
    assert!(denial.request_id.is_some());
    let cancel = audit
        .entries
        .iter()
        .find(|e| e.action == "job.cancel")
        .expect("cancel row");
    assert_eq!(cancel.target.as_deref(), Some(format!("job:{id}").as_str()));
    assert!(cancel.actor.starts_with("apikey:"));
    let recent = ok(&kobo_coord(&data, &["audit", "--since", "1h"]));
    assert!(recent.contains("node.revoke"), "{recent}");
    let verified = ok(&kobo_coord(&data, &["audit", "verify"]));
    assert!(verified.contains("intact"), "{verified}");

    // The table refuses edits; forcing one breaks the chain and shows.
    let conn = rusqlite::Connection::open(cluster.db_path()).expect("open");
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy");
    let refused = conn.execute("UPDATE audit_log SET actor = 'nobody' WHERE id = 2", []);
    assert!(
        format!("{refused:?}").contains("append-only"),
        "{refused:?}"
    );
    conn.execute_batch(
        "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET actor = 'nobody' WHERE id = 2;",
    )
    .expect("tamper");
    let tampered = kobo_coord(&data, &["audit", "verify"]);
    assert!(
        !tampered.status.success(),
        "verify must fail on a tampered log"
    );
    let said = String::from_utf8_lossy(&tampered.stderr);
    assert!(said.contains("row 2"), "{said}");
}
