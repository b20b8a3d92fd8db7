//! Failed attempts: retried with backoff, then `dead` with the last error.

use kobo_protocol::{JobState, SubmitJob};
use kobo_tests::cluster::{AgentSpec, Cluster, job};
use kobo_tests::fake_llm::FakeFailure;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_retried_then_dead_with_the_last_error() {
    let mut cluster = Cluster::builder().max_attempts(3).start().await;
    cluster
        .fake
        .update_behavior(|b| b.fail = Some(FakeFailure::status(500)));
    cluster
        .agent(AgentSpec::new("alpha", &["general_query"]))
        .await;
    let id = cluster.submit_prompt("general_query", "doomed").await;
    let done = cluster.wait_done(id).await;
    assert_eq!(done.state, JobState::Dead);
    assert_eq!(done.attempts, 3);
    let error = done.last_error.expect("last error kept");
    assert!(error.contains("500"), "{error}");
    assert_eq!(cluster.fake.requests_to("/api/generate"), 3);
    let detail = cluster.client().job(id).await.expect("job");
    assert_eq!(detail.attempts.len(), 3);
    assert!(detail.attempts.iter().all(|a| a.outcome == "failed"));
    let backoffs = detail
        .events
        .iter()
        .filter(|e| e.to_state == JobState::Scheduled)
        .count();
    assert_eq!(backoffs, 2, "two retries waited out a backoff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_retryable_failure_is_dead_at_once_and_a_flaky_one_recovers() {
    let mut cluster = Cluster::builder().max_attempts(5).start().await;
    cluster
        .fake
        .update_behavior(|b| b.fail = Some(FakeFailure::status(400)));
    cluster
        .agent(AgentSpec::new("alpha", &["general_query"]).backend("openai"))
        .await;
    let id = cluster.submit_prompt("general_query", "bad request").await;
    let done = cluster.wait_done(id).await;
    assert_eq!(done.state, JobState::Dead);
    assert_eq!(done.attempts, 1, "400 is not retried");

    cluster.fake.update_behavior(|b| {
        let mut fail = FakeFailure::status(503);
        fail.first_n = Some(2);
        b.fail = Some(fail);
    });
    let id = cluster.submit_prompt("general_query", "flaky").await;
    let done = cluster.wait_done(id).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.attempts, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_llm_call_times_out_per_attempt() {
    let mut cluster = Cluster::builder().max_attempts(2).start().await;
    cluster.fake.update_behavior(|b| b.hang = true);
    cluster
        .agent(AgentSpec::new("alpha", &["general_query"]))
        .await;
    let id = cluster
        .submit(&SubmitJob {
            timeout_ms: Some(300),
            ..job("general_query", "hang")
        })
        .await;
    let done = cluster.wait_done(id).await;
    assert_eq!(done.state, JobState::Dead);
    assert_eq!(done.attempts, 2);
    assert!(done.last_error.expect("error").contains("timed out"));
    assert!(
        cluster
            .fake
            .wait_idle(std::time::Duration::from_secs(5))
            .await,
        "timed-out calls were dropped"
    );
}
