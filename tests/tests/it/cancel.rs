//! Cancelling queued and running jobs.

use std::time::Duration;

use kobo_protocol::JobState;
use kobo_tests::cluster::{AgentSpec, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_queued_job() {
    let cluster = Cluster::builder().start().await;
    let id = cluster
        .submit_prompt("general_query", "nobody runs me")
        .await;
    let job = cluster.client().cancel(id).await.expect("cancel");
    assert_eq!(job.state, JobState::Cancelled);
    assert!(job.finished_at.is_some());
    // Cancelling again is a conflict, not a silent success.
    let again = cluster
        .client()
        .cancel(id)
        .await
        .expect_err("second cancel");
    assert!(again.to_string().contains("already cancelled"), "{again}");
    let missing = cluster
        .client()
        .cancel(999_999)
        .await
        .expect_err("no such job");
    assert!(missing.to_string().contains("404"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_running_job_aborts_the_llm_call() {
    let mut cluster = Cluster::builder().start().await;
    cluster.fake.update_behavior(|b| b.hang = true);
    let alpha = cluster
        .agent(AgentSpec::new("alpha", &["general_query"]))
        .await;
    let id = cluster.submit_prompt("general_query", "long running").await;
    cluster.wait_state(id, JobState::Leased).await;
    cluster
        .wait_until("the LLM call started", || async {
            cluster.fake.in_flight() == 1
        })
        .await;
    let job = cluster.client().cancel(id).await.expect("cancel");
    assert_eq!(job.state, JobState::Cancelled);
    assert!(
        cluster.fake.wait_idle(Duration::from_secs(10)).await,
        "the agent aborted the LLM call after its heartbeat answer"
    );
    assert!(cluster.agents[alpha].log_text().contains("no longer ours"));
    let detail = cluster.client().job(id).await.expect("job");
    assert_eq!(detail.job.state, JobState::Cancelled);
    assert_eq!(detail.attempts[0].outcome, "cancelled");
    // The freed worker takes new work.
    cluster.fake.update_behavior(|b| b.hang = false);
    let next = cluster.submit_prompt("general_query", "next").await;
    assert_eq!(cluster.wait_done(next).await.state, JobState::Succeeded);
}
