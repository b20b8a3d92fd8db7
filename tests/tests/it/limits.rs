//! Each API key's limits, end to end against a real coordinator: requests
//! per minute exactly at their edge (a refused request or batch writes no
//! job, only its audit row), refused in the kobo, OpenAI and Ollama shapes
//! with `Retry-After` (the official Python clients see a 429); tokens per
//! minute once the key's answers filled the window; a budget that stops a
//! key and says so, never dropping a job already queued; a concurrency
//! limit that holds exactly (never more, and the limit reached).

use kobo_client::ApiClient;
use kobo_protocol::{
    AccessRole, AuditQuery, Budget, BudgetPeriod, JobState, KeyPolicy, KeyPolicyUpdate, SubmitJob,
};
use kobo_tests::cluster::{AgentSpec, Cluster, job};
use kobo_tests::fake_llm::FakeBehavior;

use crate::gateway;

const MODEL: &str = "qwen2.5:0.5b";

fn job_count(cluster: &Cluster) -> i64 {
    cluster
        .db()
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .expect("count")
}

async fn limited(cluster: &Cluster, name: &str, policy: KeyPolicy) -> (ApiClient, String, String) {
    let (client, created) = cluster
        .client_with_policy(name, AccessRole::Submit, policy)
        .await;
    (client, created.key, created.id)
}

/// The 429 of a kobo API call: (code, message, Retry-After seconds).
async fn refused_submit(
    cluster: &Cluster,
    key: &str,
    body: serde_json::Value,
    path: &str,
) -> (String, String, u64) {
    let http = kobo_client::http_client(Some(&std::fs::read(cluster.ca_path()).expect("ca")))
        .expect("http");
    let answer = http
        .post(format!("{}{path}", cluster.url()))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status(), 429, "{path} over the limit");
    let retry_after: u64 = answer
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    let error: kobo_protocol::ErrorBody = answer.json().await.expect("kobo's error body");
    (error.error.code, error.error.message, retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_hold_at_their_edge_in_every_apis_shape() {
    let mut cluster = Cluster::builder().start().await;
    cluster
        .agent(AgentSpec::new("tokyo-01", &["general_query"]))
        .await;
    let rpm = |n| KeyPolicy {
        rpm: Some(n),
        ..KeyPolicy::default()
    };
    let (client, key, _) = limited(&cluster, "five-a-minute", rpm(5)).await;
    for idx in 0..5 {
        client
            .submit(&job("general_query", &format!("within the limit {idx}")))
            .await
            .expect("within the limit");
    }
    let before = job_count(&cluster);
    let (code, message, retry_after) = refused_submit(
        &cluster,
        &key,
        serde_json::json!({"kind": "general_query", "prompt": "the sixth"}),
        "/v1/jobs",
    )
    .await;
    assert_eq!(code, "rate_limited");
    assert!(message.contains("5 requests per minute"), "{message}");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(
        job_count(&cluster),
        before,
        "the refused request wrote no job"
    );
    let denied = cluster
        .client()
        .audit(&AuditQuery::default())
        .await
        .expect("audit")
        .entries
        .into_iter()
        .filter(|e| e.outcome == "denied" && e.action == "job.submit")
        .count();
    assert_eq!(denied, 1, "the refusal is audited");

    // A batch is admitted whole or not at all.
    let (batcher, batch_key, _) = limited(&cluster, "batcher", rpm(5)).await;
    let four: Vec<SubmitJob> = (0..4)
        .map(|i| job("general_query", &format!("b{i}")))
        .collect();
    batcher.submit_batch(four).await.expect("4 of 5");
    let before = job_count(&cluster);
    let (code, _, _) = refused_submit(
        &cluster,
        &batch_key,
        serde_json::json!({"jobs": [
            {"kind": "general_query", "prompt": "x"},
            {"kind": "general_query", "prompt": "y"},
        ]}),
        "/v1/jobs/batch",
    )
    .await;
    assert_eq!(code, "rate_limited");
    assert_eq!(job_count(&cluster), before, "not half a batch");
    batcher
        .submit(&job("general_query", "the fifth alone"))
        .await
        .expect("the fifth fits");
    // A repeated submit (same idempotency key) is answered, not counted.
    let repeat = SubmitJob {
        idempotency_key: Some("b-repeat".into()),
        ..job("general_query", "once")
    };
    let (_, once_key, _) = limited(&cluster, "once-a-minute", rpm(1)).await;
    let once = ApiClient::new(&kobo_client::Endpoint {
        url: cluster.url(),
        ca_pem: std::fs::read(cluster.ca_path()).ok(),
        api_key: Some(once_key),
    })
    .expect("client");
    let first = once.submit(&repeat).await.expect("first");
    let again = once.submit(&repeat).await.expect("the same job again");
    assert_eq!((again.id, again.created), (first.id, false));

    // The official clients, each on a key of one request a minute.
    let (_, openai_key, _) = limited(&cluster, "openai-client", rpm(1)).await;
    let seen = gateway::run(&cluster, &openai_key, MODEL, "openai_chat_limited").await;
    assert_eq!(seen["first"], true, "{seen}");
    let refused = &seen["refused"];
    assert_eq!(refused["status"], 429, "{seen}");
    assert_eq!(refused["exception"], "RateLimitError", "{seen}");
    assert_eq!(refused["type"], "requests", "{seen}");
    assert_eq!(refused["code"], "rate_limit_exceeded", "{seen}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or_default()
            .contains("1 requests per minute"),
        "{seen}"
    );
    let secs: u64 = refused["retry_after"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!((1..=60).contains(&secs), "{seen}");
    let (_, ollama_key, _) = limited(&cluster, "ollama-client", rpm(1)).await;
    let seen = gateway::run(&cluster, &ollama_key, MODEL, "ollama_chat_limited").await;
    assert_eq!(seen["first"], true, "{seen}");
    assert_eq!(seen["refused"]["status"], 429, "{seen}");
    assert!(
        seen["refused"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("requests per minute"),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_minute_stop_a_key_once_its_answers_fill_the_window() {
    let mut cluster = Cluster::builder().start().await;
    cluster
        .agent(AgentSpec::new("tokyo-01", &["general_query"]))
        .await;
    // Each answer reports its prompt's tokens plus 8 completion tokens.
    let (client, key, _) = limited(
        &cluster,
        "tokens",
        KeyPolicy {
            tpm: Some(20),
            ..KeyPolicy::default()
        },
    )
    .await;
    let mut used = 0;
    while used < 20 {
        let id = client
            .submit(&job("general_query", "count my tokens"))
            .await
            .expect("under the limit")
            .id;
        let done = cluster.wait_state(id, JobState::Succeeded).await;
        let usage = done.output.expect("output").usage;
        used += usage.prompt_tokens + usage.completion_tokens;
    }
    let (code, message, retry_after) = refused_submit(
        &cluster,
        &key,
        serde_json::json!({"kind": "general_query", "prompt": "one more"}),
        "/v1/jobs",
    )
    .await;
    assert_eq!(code, "rate_limited");
    assert!(
        message.contains("20 tokens per minute") && message.contains(&format!("used {used}")),
        "{message}"
    );
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_stops_the_key_says_why_and_drops_nothing_queued() {
    let mut cluster = Cluster::builder().start().await;
    cluster
        .agent(AgentSpec::new("tokyo-01", &["general_query"]))
        .await;
    let (client, key, id) = limited(
        &cluster,
        "ci-bot",
        KeyPolicy {
            budget: Some(Budget {
                tokens: 10,
                period: BudgetPeriod::Day,
            }),
            ..KeyPolicy::default()
        },
    )
    .await;
    // Under the budget when submitted: all three run, though together they
    // spend more than it.
    let batch: Vec<SubmitJob> = (0..3)
        .map(|i| job("general_query", &format!("q{i}")))
        .collect();
    let ids: Vec<i64> = client
        .submit_batch(batch)
        .await
        .expect("under the budget")
        .jobs
        .iter()
        .map(|j| j.id)
        .collect();
    for id in &ids {
        cluster.wait_state(*id, JobState::Succeeded).await;
    }
    let used: i64 = cluster
        .db()
        .query_row(
            "SELECT sum(prompt_tokens + completion_tokens) FROM usage WHERE key = ?1",
            [format!("apikey:{id}")],
            |r| r.get(0),
        )
        .expect("usage");
    assert!(used >= 10, "the three jobs spent {used} tokens");
    let (code, message, retry_after) = refused_submit(
        &cluster,
        &key,
        serde_json::json!({"kind": "general_query", "prompt": "over budget"}),
        "/v1/jobs",
    )
    .await;
    assert_eq!(code, "budget_exhausted");
    assert!(
        message.contains("ci-bot has spent its budget of 10 tokens per day")
            && message.contains(&format!("({used} used)"))
            && message.contains("resets at")
            && message.ends_with("T00:00:00Z"),
        "{message}"
    );
    assert!(
        (1..=86_400).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    // Through the gateway, OpenAI's own word for it.
    let http = kobo_client::http_client(Some(&std::fs::read(cluster.ca_path()).expect("ca")))
        .expect("http");
    let answer = http
        .post(format!("{}/v1/chat/completions", cluster.url()))
        .bearer_auth(&key)
        .json(&serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status(), 429);
    assert!(answer.headers().contains_key("retry-after"));
    let body: serde_json::Value = answer.json().await.expect("json");
    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("budget"),
        "{body}"
    );
    // Raising the budget lets the key through at once.
    cluster
        .client()
        .apikey_update(
            &id,
            &KeyPolicyUpdate {
                budget: Some(Budget {
                    tokens: 1_000_000,
                    period: BudgetPeriod::Day,
                }),
                ..KeyPolicyUpdate::default()
            },
        )
        .await
        .expect("raise the budget");
    client
        .submit(&job("general_query", "within the new budget"))
        .await
        .expect("accepted again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_holds_exactly_while_others_use_the_free_slots() {
    const LIMIT: usize = 2;
    let mut cluster = Cluster::builder()
        .fake(FakeBehavior {
            latency_ms: 300,
            ..FakeBehavior::default()
        })
        .start()
        .await;
    for node in ["tokyo-01", "osaka-01"] {
        cluster
            .agent(AgentSpec::new(node, &["general_query"]).max_workers(3))
            .await;
    }
    let (capped, _, capped_id) = limited(
        &cluster,
        "capped",
        KeyPolicy {
            max_concurrent: Some(LIMIT as u32),
            ..KeyPolicy::default()
        },
    )
    .await;
    let (other, _, other_id) = limited(&cluster, "other", KeyPolicy::default()).await;
    let capped_jobs: Vec<SubmitJob> = (0..10)
        .map(|i| job("general_query", &format!("c{i}")))
        .collect();
    let other_jobs: Vec<SubmitJob> = (0..6)
        .map(|i| job("general_query", &format!("o{i}")))
        .collect();
    let mut ids: Vec<i64> = capped
        .submit_batch(capped_jobs)
        .await
        .expect("capped")
        .jobs
        .iter()
        .map(|j| j.id)
        .collect();
    ids.extend(
        other
            .submit_batch(other_jobs)
            .await
            .expect("other")
            .jobs
            .iter()
            .map(|j| j.id),
    );
    for id in ids {
        cluster.wait_state(id, JobState::Succeeded).await;
    }
    let intervals = |key: &str| -> Vec<(i64, i64)> {
        cluster
            .db()
            .prepare(
                "SELECT a.started_at, a.finished_at FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE j.submitted_by = ?1",
            )
            .expect("prepare")
            .query_map([format!("apikey:{key}")], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("intervals")
    };
    let capped_runs = intervals(&capped_id);
    assert_eq!(capped_runs.len(), 10, "one attempt each");
    // Most attempts of the key running at one instant (at each start).
    let overlap =
        |at: i64, runs: &[(i64, i64)]| runs.iter().filter(|(s, f)| *s <= at && at < *f).count();
    let most = capped_runs
        .iter()
        .map(|(s, _)| overlap(*s, &capped_runs))
        .max()
        .unwrap_or(0);
    assert_eq!(
        most, LIMIT,
        "the capped key ran at most, and at some point exactly, {LIMIT} at once"
    );
    let other_runs = intervals(&other_id);
    let alongside = other_runs
        .iter()
        .any(|(s, _)| overlap(*s, &capped_runs) > 0);
    assert!(
        alongside,
        "the other key used the slots the capped key left free"
    );
    eprintln!(
        "concurrency limit {LIMIT}: at most {most} of the capped key's 10 jobs at once, the other key's 6 alongside"
    );
}
