//! What the packaged agent service relies on, without systemd: `kobo-agent
//! join --enroll-only` enrolls and exits, then `kobo-agent` with no flags,
//! given the settings of the shipped packaging/agent.env as its environment
//! (as the unit's EnvironmentFile= gives them), registers and runs a job.
//! scripts/test-package checks the .debs themselves.

use std::process::Stdio;
use std::time::Duration;

use kobo_protocol::JobState;
use kobo_tests::cluster::{Cluster, binary};

/// The `KEY=value` lines of an environment file, comments and blanks skipped.
fn env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packaged_agent_settings_enroll_once_then_run_from_the_environment() {
    let cluster = Cluster::builder().start().await;
    let state_dir = cluster.data_dir.join("kobo-agent-state");
    let token = cluster
        .client()
        .token_create("pkg-01", Duration::from_secs(300))
        .await
        .expect("join token")
        .token;

    let enrolled = tokio::process::Command::new(binary("kobo-agent"))
        .args([
            "join",
            &cluster.url(),
            "--token",
            &token,
            "--node-id",
            "pkg-01",
        ])
        .arg("--state-dir")
        .arg(&state_dir)
        .arg("--enroll-only")
        .output()
        .await
        .expect("run kobo-agent join");
    assert!(
        enrolled.status.success(),
        "{}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    for file in ["node.key", "node.pem", "ca.pem"] {
        assert!(state_dir.join(file).exists(), "{file} after --enroll-only");
    }
    assert!(
        cluster.client().nodes().await.expect("nodes").is_empty(),
        "--enroll-only does not run the agent"
    );

    // The shipped settings file, with this cluster's values filled in.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/agent.env"
    ))
    .expect("packaging/agent.env");
    let mut settings = env_file(&shipped);
    let keys: Vec<&str> = settings.iter().map(|(k, _)| k.as_str()).collect();
    for key in [
        "KOBO_COORDINATOR",
        "KOBO_NODE_ID",
        "KOBO_REGION",
        "KOBO_CAPABILITIES",
        "KOBO_LLM",
    ] {
        assert!(keys.contains(&key), "agent.env sets {key}: {keys:?}");
    }
    for (key, value) in &mut settings {
        match key.as_str() {
            "KOBO_COORDINATOR" => *value = cluster.url(),
            "KOBO_NODE_ID" => *value = "pkg-01".into(),
            "KOBO_REGION" => *value = "eu-west-2".into(),
            "KOBO_LLM" => *value = "sim".into(),
            _ => {}
        }
    }
    let log = cluster.data_dir.join("pkg-agent.log");
    let mut agent = tokio::process::Command::new(binary("kobo-agent"))
        .env_clear()
        .envs(settings)
        // What the unit's Environment= line sets.
        .env("KOBO_AGENT_DIR", &state_dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start kobo-agent");
    cluster
        .wait_until("pkg-01 registers", || async {
            cluster
                .client()
                .nodes()
                .await
                .is_ok_and(|nodes| nodes.iter().any(|n| n.node_id == "pkg-01"))
        })
        .await;
    let id = cluster
        .submit_prompt("general_query", "from the package")
        .await;
    let job = cluster.wait_done(id).await;
    assert_eq!(
        job.state,
        JobState::Succeeded,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(job.node_id.as_deref(), Some("pkg-01"));

    // SIGTERM, as `systemctl stop` sends: it drains and exits 0.
    let pid = nix::unistd::Pid::from_raw(agent.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(kobo_tests::cluster::PATIENCE, agent.wait())
        .await
        .expect("the agent exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}
