//! Mutual TLS and enrollment against a real listener: every kind of bad
//! client certificate is refused and audited; join tokens are single-use,
//! expire, and pin the CA; node certificates renew themselves; revocation
//! takes effect on the next request and frees the node's leases.

use std::time::Duration;

use kobo_agent::identity;
use kobo_protocol::JobState;
use kobo_tests::cluster::{AgentSpec, Cluster, binary};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use reqwest::StatusCode;

/// Rows of the audit log with this action and outcome.
fn audit_rows(cluster: &Cluster, action: &str, outcome: &str) -> i64 {
    cluster
        .db()
        .query_row(
            "SELECT count(*) FROM audit_log WHERE action = ?1 AND outcome = ?2",
            [action, outcome],
            |r| r.get(0),
        )
        .expect("audit count")
}

/// A client certificate for `node_id` signed by `issuer`, valid from
/// `from_secs` to `to_secs` relative to now.
fn client_cert(
    issuer: &Issuer<'_, KeyPair>,
    node_id: &str,
    from_secs: i64,
    to_secs: i64,
) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, node_id);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs((now + from_secs) as u64);
    params.not_after = epoch + Duration::from_secs((now + to_secs) as u64);
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

fn https_client(cluster: &Cluster, identity: Option<(&str, &str)>) -> reqwest::Client {
    let ca = std::fs::read(cluster.ca_path()).expect("ca");
    let mut builder = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("ca"));
    if let Some((cert, key)) = identity {
        builder = builder.identity(
            reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes()).expect("identity"),
        );
    }
    builder.build().expect("client")
}

async fn heartbeat(
    client: &reqwest::Client,
    cluster: &Cluster,
    node_id: &str,
) -> Result<StatusCode, reqwest::Error> {
    client
        .post(format!("{}/v1/agent/heartbeat", cluster.url()))
        .json(&serde_json::json!({ "node_id": node_id, "instance_id": "i", "running": [] }))
        .send()
        .await
        .map(|r| r.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_client_certificate_is_refused_and_audited() {
    let cluster = Cluster::builder().start().await;
    let good = cluster.enroll_raw("node-a").await;
    // A valid certificate passes authentication (404: it never registered).
    assert_eq!(
        heartbeat(&good, &cluster, "node-a").await.expect("send"),
        StatusCode::NOT_FOUND
    );

    // No client certificate.
    let none = https_client(&cluster, None);
    let before = audit_rows(&cluster, "auth./v1/agent/heartbeat", "denied");
    assert_eq!(
        heartbeat(&none, &cluster, "node-a").await.expect("send"),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        audit_rows(&cluster, "auth./v1/agent/heartbeat", "denied"),
        before + 1
    );

    // A certificate from another CA, and an expired one from ours: the
    // handshake itself fails.
    let other_key = KeyPair::generate().expect("key");
    let mut other_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    other_params
        .distinguished_name
        .push(DnType::CommonName, "evil CA");
    let other_ca = Issuer::new(other_params, other_key);
    let (cert, key) = client_cert(&other_ca, "node-a", -60, 3600);
    let foreign = https_client(&cluster, Some((&cert, &key)));
    let ca_pem = std::fs::read_to_string(cluster.ca_path()).expect("ca");
    let ca_key = std::fs::read_to_string(cluster.data_dir.join("ca.key")).expect("ca key");
    let ours = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key).expect("ca key"))
        .expect("issuer");
    let (cert, key) = client_cert(&ours, "node-a", -7200, -3600);
    let expired = https_client(&cluster, Some((&cert, &key)));
    let before = audit_rows(&cluster, "auth.tls", "denied");
    for (what, client) in [("another CA", &foreign), ("expired", &expired)] {
        let result = heartbeat(client, &cluster, "node-a").await;
        assert!(
            !matches!(result, Ok(status) if status.is_success() || status == StatusCode::NOT_FOUND),
            "{what} certificate was accepted: {result:?}"
        );
    }
    cluster
        .wait_until("both refused handshakes audited", || async {
            audit_rows(&cluster, "auth.tls", "denied") >= before + 2
        })
        .await;

    // A certificate signed by our CA but never issued through enrollment
    // (unknown serial) is refused per request.
    let (cert, key) = client_cert(&ours, "node-a", -60, 3600);
    let forged = https_client(&cluster, Some((&cert, &key)));
    let before = audit_rows(&cluster, "auth.certificate", "denied");
    assert_eq!(
        heartbeat(&forged, &cluster, "node-a").await.expect("send"),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        audit_rows(&cluster, "auth.certificate", "denied"),
        before + 1
    );

    // A certificate for another node than the one the request names.
    let before = audit_rows(&cluster, "auth.node_mismatch", "denied");
    assert_eq!(
        heartbeat(&good, &cluster, "node-b").await.expect("send"),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        audit_rows(&cluster, "auth.node_mismatch", "denied"),
        before + 1
    );

    // A revoked node: refused on its very next request.
    cluster
        .client()
        .node_revoke("node-a")
        .await
        .expect("revoke");
    let before = audit_rows(&cluster, "auth.certificate", "denied");
    assert_eq!(
        heartbeat(&good, &cluster, "node-a").await.expect("send"),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        audit_rows(&cluster, "auth.certificate", "denied"),
        before + 1
    );
    assert_eq!(audit_rows(&cluster, "node.revoke", "ok"), 1);
    let ghost = cluster
        .client()
        .node_revoke("ghost")
        .await
        .expect_err("unknown node");
    assert!(ghost.to_string().contains("404"), "{ghost}");
    let key = cluster
        .client()
        .apikey_revoke("0123456789abcdef")
        .await
        .expect_err("unknown key");
    assert!(key.to_string().contains("404"), "{key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_single_use_expire_and_pin_the_ca() {
    let cluster = Cluster::builder().start().await;
    let dir = cluster.data_dir.join("join-test");
    let token = cluster
        .client()
        .token_create("n1", Duration::from_secs(60))
        .await
        .expect("token")
        .token;
    // The token is bound to n1: whatever name the agent asks for, the
    // certificate names n1.
    let enrolled = identity::join(&cluster.url(), &token, "n2", &dir.join("a"))
        .await
        .expect("join");
    assert_eq!(enrolled, "n1");
    let key_mode = std::fs::metadata(dir.join("a/node.key")).expect("key file");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
        0o600
    );

    let reused = identity::join(&cluster.url(), &token, "n1", &dir.join("b")).await;
    let err = reused.expect_err("a used token is dead");
    assert!(format!("{err:#}").contains("already used"), "{err:#}");

    let short = cluster
        .client()
        .token_create("n3", Duration::from_millis(1))
        .await
        .expect("token")
        .token;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = identity::join(&cluster.url(), &short, "n3", &dir.join("c"))
        .await
        .expect_err("expired");
    assert!(format!("{err:#}").contains("expired"), "{err:#}");
    assert_eq!(audit_rows(&cluster, "node.enroll", "denied"), 2);

    // A token pinning another CA: the agent refuses to send its CSR at all.
    let good = cluster
        .client()
        .token_create("n4", Duration::from_secs(60))
        .await
        .expect("token")
        .token;
    let parts: Vec<&str> = good.split('.').collect();
    let wrong_pin = format!("{}.{}.{}.{}", parts[0], "a".repeat(64), parts[2], parts[3]);
    let enroll_rows = |c: &Cluster| -> i64 {
        c.db()
            .query_row(
                "SELECT count(*) FROM audit_log WHERE action = 'node.enroll'",
                [],
                |r| r.get(0),
            )
            .expect("count")
    };
    let before = enroll_rows(&cluster);
    let err = identity::join(&cluster.url(), &wrong_pin, "n4", &dir.join("d"))
        .await
        .expect_err("pin");
    assert!(format!("{err:#}").contains("CA pin mismatch"), "{err:#}");
    assert_eq!(
        enroll_rows(&cluster),
        before,
        "no enrollment request reached the coordinator"
    );
    assert!(!dir.join("d/node.pem").exists());
    // The untouched token still works.
    assert_eq!(
        identity::join(&cluster.url(), &good, "n4", &dir.join("e"))
            .await
            .expect("join"),
        "n4"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_renew_their_certificates_and_keep_working() {
    let mut cluster = Cluster::builder()
        .serve_arg("--node-cert-lifetime")
        .serve_arg("6s")
        .start()
        .await;
    let alpha = cluster
        .agent(AgentSpec::new("alpha", &["general_query"]))
        .await;
    let cert_file = cluster.data_dir.join("agents/alpha-0/node.pem");
    let first = std::fs::read(&cert_file).expect("cert");
    cluster
        .wait_until("the agent renewed and stored its certificate", || async {
            audit_rows(&cluster, "node.renew", "ok") >= 1
                && std::fs::read(&cert_file).is_ok_and(|now| now != first)
        })
        .await;
    // Past the first certificate's expiry, the agent still works.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let id = cluster
        .submit_prompt("general_query", "after renewal")
        .await;
    let done = cluster.wait_done(id).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.node_id.as_deref(), Some("alpha"));
    assert!(
        cluster.agents[alpha]
            .log_text()
            .contains("node certificate renewed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_node_releases_its_leases_at_once() {
    let mut cluster = Cluster::builder().lease_ttl_ms(60_000).start().await;
    cluster.fake.update_behavior(|b| b.hang = true);
    let alpha = cluster
        .agent(AgentSpec::new("alpha", &["general_query"]))
        .await;
    let id = cluster
        .submit_prompt("general_query", "held by alpha")
        .await;
    cluster.wait_state(id, JobState::Leased).await;
    cluster
        .agent(AgentSpec::new("beta", &["general_query"]))
        .await;
    cluster.fake.update_behavior(|b| b.hang = false);

    let output = std::process::Command::new(binary("kobo-coord"))
        .args(["node", "revoke", "alpha", "--data-dir"])
        .arg(&cluster.data_dir)
        .output()
        .expect("kobo-coord node revoke");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("1 leases released"), "{printed}");
    // With a 60 s lease, only the revocation can have moved the job.
    let done = cluster.wait_done(id).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.node_id.as_deref(), Some("beta"));
    cluster
        .wait_until("alpha is refused", || async {
            cluster.agents[alpha].log_text().contains("403")
        })
        .await;
}

#[test]
fn keygen_makes_a_private_key_and_prints_a_csr_for_the_node() {
    let dir = tempfile::tempdir().expect("dir");
    let run = || {
        std::process::Command::new(binary("kobo-agent"))
            .args(["keygen", "--node-id", "osaka-01", "--state-dir"])
            .arg(dir.path())
            .output()
            .expect("kobo-agent keygen")
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let csr = String::from_utf8(first.stdout).expect("utf-8");
    assert!(
        csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
        "{csr}"
    );
    let params = rcgen::CertificateSigningRequestParams::from_pem(&csr).expect("a valid CSR");
    let cn = params
        .params
        .distinguished_name
        .get(&DnType::CommonName)
        .expect("CN");
    assert!(format!("{cn:?}").contains("osaka-01"), "{cn:?}");
    let key_path = dir.path().join("node.key");
    let mode = std::fs::metadata(&key_path).expect("key").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    // Running it again keeps the key: the CSR is for the same public key.
    let key = std::fs::read(&key_path).expect("key");
    assert!(run().status.success());
    assert_eq!(std::fs::read(&key_path).expect("key"), key);
}
