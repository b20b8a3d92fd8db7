//! An agent SIGKILLed in the middle of a streamed gateway answer, as the
//! official clients see it: the stream goes on from where it stopped on
//! another node (the text the client reads is the uninterrupted answer,
//! and the job's stored output is all of it); where the call cannot be
//! continued, the stream ends with the API's error event, never a clean
//! end.

use kobo_protocol::JobState;
use kobo_tests::cluster::Cluster;
use kobo_tests::fake_llm::reply_text;
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::gateway::{gateway_cluster, leased_job, stream_until_first_chunk};

/// What the fake LLM answers the clients' prompt.
const PROMPT: &str = "Write fizzbuzz in Rust";
/// The stream lasts 15 s on one node: the kill lands long before its end,
/// however slow the machine.
const TOKENS: u32 = 300;
const TOKENS_PER_SECOND: f64 = 20.0;

/// Starts `scenario` on a two-node cluster, SIGKILLs the node answering
/// once the client has its first chunk, and returns what the client saw,
/// with the cluster and the killed node's name.
async fn kill_mid_stream(scenario: &str) -> (Cluster, Value, String) {
    let (cluster, key) = gateway_cluster(&["tokyo-01", "osaka-01"]).await;
    cluster.fake.update_behavior(|b| {
        b.tokens_per_second = TOKENS_PER_SECOND;
        b.response_tokens = TOKENS;
    });
    let child = stream_until_first_chunk(&cluster, &key, scenario).await;
    let leased = leased_job(&cluster).await;
    let holder = leased.node_id.clone().expect("holder");
    let idx = cluster
        .agents
        .iter()
        .position(|a| a.spec.node_id == holder)
        .expect("the holder is ours");
    cluster.agents[idx].signal(Signal::SIGKILL);
    let output = child.wait_with_output().await.expect("client ends");
    let observed: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    println!("{scenario}, {holder} killed mid-stream, as the client saw it: {observed}");
    (cluster, observed, holder)
}

/// The job went on elsewhere: succeeded on the other node in its second
/// attempt, with the whole answer stored and the break in its events.
async fn assert_continued(cluster: &Cluster, killed: &str) {
    let id = crate::gateway::all_jobs(cluster).await[0].id;
    let done = cluster.wait_done(id).await;
    assert_eq!(
        done.state,
        JobState::Succeeded,
        "{done:?}\n{}",
        cluster.logs()
    );
    assert_eq!(done.attempts, 2, "{done:?}");
    assert_ne!(done.node_id.as_deref(), Some(killed), "{done:?}");
    let output = done.output.expect("output");
    assert_eq!(
        output.text,
        reply_text(PROMPT, TOKENS),
        "the stored output is all of it"
    );
    // The first attempt ended when its stream broke (or, had the relay not
    // seen the break first, when its node was found lost); the second
    // lease's event says where it went on from.
    let detail = cluster.client().job(id).await.expect("detail");
    let details: Vec<&str> = detail
        .events
        .iter()
        .filter_map(|e| e.detail.as_deref())
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("stream_broken:") || d.starts_with("node_lost:")),
        "{details:?}"
    );
    let resumed = details
        .iter()
        .find(|d| d.starts_with("lease 2; continues the broken stream from its first"))
        .unwrap_or_else(|| panic!("no resume noted: {details:?}"));
    println!("the second lease: {resumed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_stream_cut_by_a_killed_agent_goes_on_from_there_on_another_node() {
    let (cluster, observed, killed) = kill_mid_stream("openai_chat_stream_slow").await;
    assert_eq!(observed["error"], Value::Null, "{observed}");
    assert_eq!(observed["finish_reason"], "stop", "{observed}");
    assert_eq!(
        observed["text"],
        reply_text(PROMPT, TOKENS),
        "the client read the uninterrupted answer, nothing twice, nothing missing"
    );
    assert_eq!(
        observed["node"],
        killed.as_str(),
        "headers name the first node"
    );
    assert_continued(&cluster, &killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ollama_stream_cut_by_a_killed_agent_goes_on_from_there_on_another_node() {
    let (cluster, observed, killed) = kill_mid_stream("ollama_chat_stream_slow").await;
    assert_eq!(observed["error"], Value::Null, "{observed}");
    assert_eq!(observed["done"], true, "{observed}");
    assert_eq!(observed["done_reason"], "stop", "{observed}");
    assert_eq!(observed["text"], reply_text(PROMPT, TOKENS), "{observed}");
    assert_continued(&cluster, &killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_cannot_be_continued_ends_with_an_error_never_a_success() {
    // A templated /api/generate prompt: no prefix can be put back into it.
    let (cluster, observed, _) = kill_mid_stream("ollama_generate_stream_slow").await;
    assert_ne!(
        observed["done"], true,
        "a cut stream looked like a success: {observed}"
    );
    let message = observed["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("cannot be continued") && message.contains("raw"),
        "the client library raised, saying why: {observed}"
    );
    let id = crate::gateway::all_jobs(&cluster).await[0].id;
    let done = cluster.wait_done(id).await;
    assert_eq!(done.state, JobState::Cancelled, "{done:?}");
}
