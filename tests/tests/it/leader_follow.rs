//! Following the leader: agents and the CLI given several coordinator URLs
//! use the one that answers, and a standby (`kobo-coord serve
//! --standby-for URL`, sharing the leader's CA) answers every route but
//! `/healthz` and `/readyz` with `503 standby` and `Kobo-Leader: URL`, which
//! the CLI follows to the leader.

use kobo_protocol::{ErrorBody, JobState, LEADER_HEADER, ROLE_HEADER, Readiness, STANDBY_CODE};
use kobo_tests::cluster::{AgentSpec, Cluster, free_port};
use reqwest::StatusCode;

/// A leader and a standby of it: its own data directory and port, the
/// leader's CA (so one CA certificate is trusted for both).
async fn leader_and_standby() -> (Cluster, Cluster) {
    let leader = Cluster::builder().start().await;
    let standby = Cluster::builder()
        .serve_arg("--standby-for")
        .serve_arg(&leader.url())
        .serve_arg("--ca-cert")
        .serve_arg(leader.ca_path().to_str().expect("utf-8 path"))
        .serve_arg("--ca-key")
        .serve_arg(leader.data_dir.join("ca.key").to_str().expect("utf-8 path"))
        .start()
        .await;
    (leader, standby)
}

/// An HTTPS client trusting the leader's CA (the standby's too).
fn raw_client(leader: &Cluster) -> reqwest::Client {
    let ca = std::fs::read(leader.ca_path()).expect("ca.pem");
    kobo_client::http_client(Some(&ca)).expect("https client")
}

/// `kobo-coord ARGS`, its standard output; panics with both outputs on failure.
async fn kobo_coord(args: &[&str]) -> String {
    let output = tokio::process::Command::new(kobo_tests::cluster::binary("kobo-coord"))
        .args(args)
        .output()
        .await
        .expect("run kobo-coord");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "kobo-coord {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_given_a_dead_url_first_works_against_the_live_coordinator() {
    let mut cluster = Cluster::builder().start().await;
    let dead = format!("https://127.0.0.1:{}", free_port());
    let urls = format!("{dead},{}", cluster.url());
    let idx = cluster
        .agent(AgentSpec::new("follow-01", &["general_query"]).via(&urls))
        .await;
    let id = cluster
        .submit_prompt("general_query", "through the second URL")
        .await;
    let done = cluster.wait_done(id).await;
    assert_eq!(done.state, JobState::Succeeded, "{}", cluster.logs());
    assert_eq!(done.node_id.as_deref(), Some("follow-01"));
    let log = cluster.agents[idx].log_text();
    assert!(
        log.contains("coordinator unreachable; trying the next") && log.contains(&dead),
        "the agent's log tells it moved past {dead}:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_answers_every_route_with_503_naming_the_leader() {
    let (leader, standby) = leader_and_standby().await;
    let http = raw_client(&leader);
    let key = kobo_protocol::DataDir::new(&leader.data_dir)
        .local_admin_key()
        .expect("admin key");
    for (method, path) in [
        (reqwest::Method::GET, "/v1/jobs"),
        (reqwest::Method::POST, "/v1/jobs"),
        (reqwest::Method::GET, "/v1/join/ca"),
        (reqwest::Method::POST, "/v1/agent/lease"),
        (reqwest::Method::GET, "/v1/status"),
        (reqwest::Method::POST, "/v1/chat/completions"),
    ] {
        let response = http
            .request(method.clone(), format!("{}{path}", standby.url()))
            .bearer_auth(&key)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let what = format!("{method} {path} on the standby");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(header(LEADER_HEADER), Some(leader.url()), "{what}");
        assert_eq!(header(ROLE_HEADER).as_deref(), Some("standby"), "{what}");
        assert_eq!(header("retry-after").as_deref(), Some("1"), "{what}");
        let body: ErrorBody = response.json().await.expect("kobo's error body");
        assert_eq!(body.error.code, STANDBY_CODE, "{what}");
        assert_eq!(
            body.error.message,
            format!("standby: the leader is at {}", leader.url()),
            "{what}"
        );
    }

    let health = http
        .get(format!("{}/healthz", standby.url()))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.expect("body"), "ok");

    let ready = http
        .get(format!("{}/readyz", standby.url()))
        .send()
        .await
        .expect("readyz on the standby");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        ready.json::<Readiness>().await.expect("readiness"),
        Readiness {
            role: "standby".into(),
            epoch: None,
            leader: Some(leader.url()),
        }
    );
    let ready = http
        .get(format!("{}/readyz", leader.url()))
        .send()
        .await
        .expect("readyz on the leader");
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(
        ready.json::<Readiness>().await.expect("readiness").role,
        "leader"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_follows_a_standbys_pointer_to_the_leader() {
    let (leader, standby) = leader_and_standby().await;
    let key = kobo_protocol::DataDir::new(&leader.data_dir)
        .local_admin_key()
        .expect("admin key");
    let ca = leader.ca_path();
    let ca = ca.to_str().expect("utf-8 path");
    let dead = format!("https://127.0.0.1:{}", free_port());

    // Only the standby's URL: its 503 names the leader, the CLI goes there.
    let only_standby = standby.url();
    // A dead URL first, then the standby: past the dead one, then followed.
    let dead_then_standby = format!("{dead},{}", standby.url());
    for (urls, prompt) in [
        (only_standby.as_str(), "sent to the standby"),
        (
            dead_then_standby.as_str(),
            "sent past a dead URL to the standby",
        ),
    ] {
        let printed = kobo_coord(&[
            "submit",
            prompt,
            "--url",
            urls,
            "--ca",
            ca,
            "--api-key",
            &key,
        ])
        .await;
        let id: kobo_protocol::JobId = printed
            .split_whitespace()
            .find_map(|word| word.parse().ok())
            .unwrap_or_else(|| panic!("a job id in {printed:?}"));
        let on_leader = leader
            .client()
            .job(id)
            .await
            .expect("the job is on the leader");
        assert_eq!(
            on_leader.request.prompt.as_deref(),
            Some(prompt),
            "--url {urls}: the leader holds the job"
        );
    }
    assert!(
        standby.client().readiness().await.expect("readiness").role == "standby",
        "the standby still stands by"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_given_only_a_standby_follows_it_to_the_leader() {
    let (mut leader, standby) = leader_and_standby().await;
    let idx = leader
        .agent(AgentSpec::new("follow-02", &["general_query"]).via(&standby.url()))
        .await;
    let id = leader
        .submit_prompt("general_query", "found through the standby")
        .await;
    let done = leader.wait_done(id).await;
    assert_eq!(done.state, JobState::Succeeded, "{}", leader.logs());
    assert_eq!(done.node_id.as_deref(), Some("follow-02"));
    let log = leader.agents[idx].log_text();
    assert!(
        log.contains("following the leader") && log.contains(&leader.url()),
        "the agent's log tells it followed the standby to {}:\n{log}",
        leader.url()
    );
}
