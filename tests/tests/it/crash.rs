//! The coordinator SIGKILLed mid-run and restarted: a Jepsen-style ledger of
//! acknowledged submits, each of which must end in exactly one terminal state.

use std::time::Duration;

use kobo_protocol::JobState;
use kobo_tests::cluster::{AgentSpec, Cluster, job};
use kobo_tests::ledger::{Expect, Ledger};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_crash_loses_no_acknowledged_job_and_completes_none_twice() {
    let mut cluster = Cluster::builder().start().await;
    cluster.fake.update_behavior(|b| b.latency_ms = 150);
    cluster
        .agent(AgentSpec::new("alpha", &["general_query"]).max_workers(3))
        .await;
    cluster
        .agent(
            AgentSpec::new("beta", &["general_query"])
                .backend("openai")
                .max_workers(3),
        )
        .await;

    let mut ledger = Ledger::new();
    let patience = Duration::from_secs(30);
    for idx in 0..30 {
        let job = job("general_query", &format!("before {idx}"));
        ledger
            .submit(cluster.client(), job, Expect::Succeeded, patience)
            .await
            .expect("submit");
    }
    // Some jobs are running, some done, some queued: kill it now.
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.kill_coordinator().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.start_coordinator().await;
    for idx in 0..20 {
        let job = job("general_query", &format!("after {idx}"));
        ledger
            .submit(cluster.client(), job, Expect::Succeeded, patience)
            .await
            .expect("submit");
    }
    for id in ledger.acknowledged_ids() {
        cluster.wait_done(id).await;
    }
    // Nothing acknowledged lost, every job ended exactly once, as expected.
    ledger.check(&cluster.db_path()).assert_ok(&cluster.logs());
    let log =
        std::fs::read_to_string(cluster.data_dir.join("coordinator-2.log")).unwrap_or_default();
    assert!(
        log.contains("kobo-coord serving"),
        "the restarted coordinator served:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_keeps_its_result_while_the_coordinator_is_down() {
    let mut cluster = Cluster::builder().start().await;
    cluster.fake.update_behavior(|b| b.latency_ms = 800);
    cluster
        .agent(AgentSpec::new("alpha", &["general_query"]))
        .await;
    let id = cluster
        .submit(&job("general_query", "survive the outage"))
        .await;
    cluster
        .wait_until("the LLM call started", || async {
            cluster.fake.requests_to("/api/generate") == 1
        })
        .await;
    cluster.kill_coordinator().await;
    // The LLM call finishes while the coordinator is away; the agent keeps
    // the result and retries reporting it.
    assert!(cluster.fake.wait_idle(Duration::from_secs(10)).await);
    assert_eq!(cluster.fake.requests_to("/api/generate"), 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.start_coordinator().await;
    let done = cluster.wait_done(id).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(
        done.attempts, 1,
        "the kept result was accepted; the job did not run again"
    );
    assert_eq!(cluster.fake.requests_to("/api/generate"), 1);
    let agent_log = cluster.agents[0].log_text();
    assert!(
        agent_log.contains("keeping the result and retrying"),
        "{agent_log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_coordinator_promptly_even_with_parked_agents() {
    let mut cluster = Cluster::builder().start().await;
    cluster
        .agent(AgentSpec::new("alpha", &["general_query"]))
        .await;
    let mut coordinator = cluster.coordinator.take().expect("running");
    let pid = nix::unistd::Pid::from_raw(coordinator.id().expect("pid") as i32);
    let asked = std::time::Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("sigterm");
    let status = tokio::time::timeout(Duration::from_secs(10), coordinator.wait())
        .await
        .expect("stops within 10 s")
        .expect("wait");
    assert!(status.success(), "exit status {status}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "a parked long-poll held shutdown for {:?}",
        asked.elapsed()
    );
}
