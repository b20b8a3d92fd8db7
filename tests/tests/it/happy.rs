//! The happy path on both backends, streaming included.

use kobo_protocol::{ChatMessage, JobState, Role, SubmitJob};
use kobo_tests::cluster::{AgentSpec, Cluster, job};
use kobo_tests::fake_llm::reply_text;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_generate_and_chat_jobs_succeed_with_usage() {
    let mut cluster = Cluster::builder().start().await;
    cluster
        .agent(AgentSpec::new("tokyo-01", &["code_generation"]))
        .await;

    let id = cluster
        .submit_prompt("code_generation", "Write fizzbuzz in Rust")
        .await;
    let done = cluster.wait_done(id).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.node_id.as_deref(), Some("tokyo-01"));
    assert_eq!(done.attempts, 1);
    let output = done.output.expect("output");
    assert!(!output.text.is_empty());
    assert_eq!(
        output.model, "qwen2.5:0.5b",
        "the first model the server lists is the default"
    );
    assert!(output.usage.completion_tokens > 0);
    assert!(output.usage.prompt_tokens > 0);
    assert_eq!(cluster.fake.requests_to("/api/generate"), 1);

    let chat = SubmitJob {
        messages: Some(vec![ChatMessage {
            role: Role::User,
            content: "Say hello".into(),
        }]),
        prompt: None,
        model: Some("llama3.2:1b".into()),
        system: Some("Be brief.".into()),
        ..job("code_generation", "unused")
    };
    let id = cluster.submit(&chat).await;
    let done = cluster.wait_done(id).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.output.expect("output").model, "llama3.2:1b");
    assert_eq!(cluster.fake.requests_to("/api/chat"), 1);
    let body = cluster.fake.last_body("/api/chat").expect("chat body");
    assert_eq!(body["stream"], true, "the agent streams");
    assert_eq!(body["messages"][0]["role"], "system");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_streaming_job_succeeds_with_the_exact_text() {
    let mut cluster = Cluster::builder().start().await;
    cluster
        .agent(AgentSpec::new("osaka-01", &["general_query"]).backend("openai"))
        .await;
    let id = cluster
        .submit_prompt("general_query", "What is the capital of Japan?")
        .await;
    let done = cluster.wait_done(id).await;
    assert_eq!(done.state, JobState::Succeeded);
    let output = done.output.expect("output");
    let behavior = cluster.fake.behavior();
    assert_eq!(
        output.text,
        reply_text("What is the capital of Japan?", behavior.response_tokens)
    );
    assert_eq!(
        output.usage.completion_tokens,
        behavior.response_tokens as u64
    );
    assert_eq!(cluster.fake.requests_to("/v1/chat/completions"), 1);
    let body = cluster
        .fake
        .last_body("/v1/chat/completions")
        .expect("body");
    assert_eq!(body["stream"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_only_on_nodes_listing_their_kind() {
    let mut cluster = Cluster::builder().start().await;
    cluster
        .agent(AgentSpec::new("tokyo-01", &["code_generation"]))
        .await;
    cluster
        .agent(AgentSpec::new("osaka-01", &["documentation"]).backend("openai"))
        .await;
    let mut ids = Vec::new();
    for idx in 0..6 {
        let kind = if idx % 2 == 0 {
            "code_generation"
        } else {
            "documentation"
        };
        ids.push((
            kind,
            cluster.submit_prompt(kind, &format!("task {idx}")).await,
        ));
    }
    for (kind, id) in ids {
        let done = cluster.wait_done(id).await;
        assert_eq!(done.state, JobState::Succeeded);
        let expected = if kind == "code_generation" {
            "tokyo-01"
        } else {
            "osaka-01"
        };
        assert_eq!(
            done.node_id.as_deref(),
            Some(expected),
            "job {id} of kind {kind}"
        );
    }
    // A kind no node lists stays queued, with the reason visible.
    let id = cluster.submit_prompt("translation", "hola").await;
    let detail = cluster.client().job(id).await.expect("job");
    assert_eq!(detail.job.state, JobState::Queued);
    let reason = detail.job.queue_reason.expect("a queue reason");
    assert!(reason.contains("no live node can run it"), "{reason}");
    assert!(reason.contains("translation"), "{reason}");
}
