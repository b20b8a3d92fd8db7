//! Sharing a fleet between API keys, end to end: a batch flood neither
//! starves another key's chat (interactive class) nor outweighs a key of
//! higher weight (weighted fair share), and a session's requests go back to
//! the node that served it last while it is free, elsewhere once it stays
//! busy past the session bound. Waits and shares are read from the
//! database (`jobs.created_at`, `job_attempts.started_at`): the
//! coordinator's own clock, not the test's.

use std::time::Duration;

use kobo_protocol::{AccessRole, JobState, KeyPolicy, SubmitJob};
use kobo_tests::cluster::{AgentSpec, Cluster};
use kobo_tests::fake_llm::FakeBehavior;
use serde_json::json;

const MODEL: &str = "qwen2.5:0.5b";

/// The bound on the chat key's median wait while the flood is queued: a
/// slot frees every few milliseconds here, and the chat request takes the
/// next one. Without the interactive class it would wait behind the whole
/// backlog (about 2,000 × 40 ms / 8 slots = 10 s).
const CHAT_P50_BOUND_MS: i64 = 500;
/// How far each key's share of the contended slots may be from its weight's
/// share, in percentage points.
const SHARE_TOLERANCE: f64 = 0.05;
/// Jain's fairness index over the keys' shares normalised by their weights
/// (1 is perfectly fair).
const MIN_JAIN: f64 = 0.98;

/// Jain's fairness index of `x`: (Σx)² / (n Σx²).
pub(crate) fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let squares: f64 = x.iter().map(|v| v * v).sum();
    if squares == 0.0 {
        return 1.0;
    }
    sum * sum / (x.len() as f64 * squares)
}

fn median(mut values: Vec<i64>) -> i64 {
    values.sort_unstable();
    values[values.len() / 2]
}

fn batch(prompt: &str, n: usize) -> Vec<SubmitJob> {
    (0..n)
        .map(|idx| SubmitJob {
            kind: "general_query".into(),
            prompt: Some(format!("{prompt} {idx}")),
            ..SubmitJob::default()
        })
        .collect()
}

/// Each job of `actor`: its first lease's time − its submit time (ms).
fn first_waits(db: &rusqlite::Connection, actor: &str) -> Vec<i64> {
    db.prepare(
        "SELECT a.started_at - j.created_at FROM jobs j JOIN job_attempts a ON a.job_id = j.id AND a.attempt = 1 \
         WHERE j.submitted_by = ?1",
    )
    .expect("prepare")
    .query_map([actor], |r| r.get(0))
    .expect("waits")
    .collect::<Result<_, _>>()
    .expect("rows")
}

fn count(cluster: &Cluster, sql: &str, key: &str) -> i64 {
    cluster
        .db()
        .query_row(sql, [key], |r| r.get(0))
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_flood_neither_starves_chat_nor_outweighs_a_heavier_key() {
    let mut cluster = Cluster::builder()
        .fake(FakeBehavior {
            latency_ms: 40,
            ..FakeBehavior::default()
        })
        .start()
        .await;
    for node in ["fair-01", "fair-02"] {
        cluster
            .agent(AgentSpec::new(node, &["general_query"]).max_workers(4))
            .await;
    }
    let policy = |weight| KeyPolicy {
        weight,
        ..KeyPolicy::default()
    };
    let (flood, flood_key) = cluster
        .client_with_policy("flood", AccessRole::Submit, policy(1))
        .await;
    let (heavy, heavy_key) = cluster
        .client_with_policy("heavy", AccessRole::Submit, policy(3))
        .await;
    let (_, chat_key) = cluster
        .client_with_policy("chat", AccessRole::Submit, policy(1))
        .await;
    let flood_actor = format!("apikey:{}", flood_key.id);
    let heavy_actor = format!("apikey:{}", heavy_key.id);
    let chat_actor = format!("apikey:{}", chat_key.id);

    // The flood first (it takes every free slot at once), then the heavier
    // key's backlog.
    for half in 0..2 {
        flood
            .submit_batch(batch(&format!("flood {half}"), 1000))
            .await
            .expect("flood");
    }
    heavy
        .submit_batch(batch("heavy", 1000))
        .await
        .expect("heavy");

    // One chat request every 100 ms through the gateway while both
    // backlogs are queued.
    let http = kobo_client::http_client(Some(&std::fs::read(cluster.ca_path()).expect("ca")))
        .expect("http");
    let url = format!("{}/v1/chat/completions", cluster.url());
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    let mut chats = Vec::new();
    for idx in 0..30 {
        ticks.tick().await;
        let request = http
            .post(&url)
            .bearer_auth(&chat_key.key)
            .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": format!("chat {idx}")}]}))
            .send();
        chats.push(tokio::spawn(request));
    }
    for chat in chats {
        let answer = chat.await.expect("task").expect("chat answer");
        assert_eq!(answer.status(), 200, "a chat request was refused");
    }
    cluster
        .wait_until("the heavier key's backlog is done", || async {
            count(
                &cluster,
                "SELECT count(*) FROM jobs WHERE submitted_by = ?1 AND state = 'succeeded'",
                &heavy_actor,
            ) == 1000
        })
        .await;
    // The flood is still queued: both keys were backlogged all along.
    assert!(
        count(
            &cluster,
            "SELECT count(*) FROM jobs WHERE submitted_by = ?1 AND state = 'queued'",
            &flood_actor,
        ) > 0,
        "the flood ran out before the heavier key: the window is not contended"
    );

    let db = cluster.db();
    let waits = first_waits(&db, &chat_actor);
    assert_eq!(waits.len(), 30, "every chat request is one job");
    let chat_p50 = median(waits.clone());
    let flood_p50 = median(first_waits(&db, &flood_actor));
    eprintln!(
        "chat wait p50 {chat_p50} ms (max {} ms) while the flood's p50 was {flood_p50} ms",
        waits.iter().max().copied().unwrap_or(0)
    );
    assert!(
        chat_p50 <= CHAT_P50_BOUND_MS,
        "the chat key's median wait was {chat_p50} ms, over {CHAT_P50_BOUND_MS} ms: {waits:?}"
    );

    // Slots granted to each batch key while both were backlogged: every
    // lease up to the heavier key's last one.
    let (flood_slots, heavy_slots): (i64, i64) = db
        .query_row(
            "WITH window AS (SELECT max(a.started_at) AS until FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE j.submitted_by = ?2) \
             SELECT sum(j.submitted_by = ?1), sum(j.submitted_by = ?2) FROM job_attempts a JOIN jobs j ON j.id = a.job_id, window \
             WHERE a.started_at <= window.until AND j.submitted_by IN (?1, ?2)",
            [&flood_actor, &heavy_actor],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("slots");
    let total = (flood_slots + heavy_slots) as f64;
    let shares = [flood_slots as f64 / total, heavy_slots as f64 / total];
    let weights = [0.25, 0.75];
    let index = jain(&[shares[0] / weights[0], shares[1] / weights[1]]);
    eprintln!(
        "slots while both were backlogged: flood (weight 1) {flood_slots}, heavy (weight 3) {heavy_slots}; shares {:.3} / {:.3}; Jain's index {index:.4}",
        shares[0], shares[1]
    );
    for (share, weight) in shares.iter().zip(weights) {
        assert!(
            (share - weight).abs() <= SHARE_TOLERANCE,
            "shares {shares:?} against weights {weights:?}: off by more than {SHARE_TOLERANCE}"
        );
    }
    assert!(index >= MIN_JAIN, "Jain's index {index} < {MIN_JAIN}");
}

/// Sends one chat request of session `session` in the background.
fn chat_in_session(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    session: &str,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let request = http
        .post(url)
        .bearer_auth(key)
        .header("x-session-id", session)
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "again"}]}))
        .send();
    tokio::spawn(request)
}

/// The newest job of `session`: its id, state and node.
fn newest_of_session(cluster: &Cluster, session: &str) -> Option<(i64, String, Option<String>)> {
    cluster
        .db()
        .query_row(
            "SELECT id, state, node_id FROM jobs WHERE session = ?1 ORDER BY id DESC LIMIT 1",
            [session],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_returns_to_its_node_when_free_and_moves_on_when_it_stays_busy() {
    const SESSION_WAIT_MS: i64 = 3000;
    let mut cluster = Cluster::builder()
        .serve_arg(&format!("--session-wait-ms={SESSION_WAIT_MS}"))
        .start()
        .await;
    // Only `warm` exists for the session's first request, so it serves it.
    cluster
        .agent(AgentSpec::new("warm", &["general_query", "pinned"]).max_workers(1))
        .await;
    let key = cluster
        .client_with_policy("sessions", AccessRole::Submit, KeyPolicy::default())
        .await
        .1
        .key;
    let http = kobo_client::http_client(Some(&std::fs::read(cluster.ca_path()).expect("ca")))
        .expect("http");
    let url = format!("{}/v1/chat/completions", cluster.url());
    let first = chat_in_session(&http, &url, &key, "conv-1")
        .await
        .expect("task")
        .expect("answer");
    assert_eq!(first.status(), 200);
    let (first_id, _, node) = newest_of_session(&cluster, "conv-1").expect("the first job");
    assert_eq!(node.as_deref(), Some("warm"));
    cluster.wait_state(first_id, JobState::Succeeded).await;
    cluster
        .agent(AgentSpec::new("cold", &["general_query"]).max_workers(1))
        .await;

    // Both free: the session's next requests go back to `warm`.
    for _ in 0..3 {
        let answer = chat_in_session(&http, &url, &key, "conv-1")
            .await
            .expect("task")
            .expect("answer");
        assert_eq!(answer.status(), 200);
        let (id, _, node) = newest_of_session(&cluster, "conv-1").expect("job");
        assert_eq!(
            node.as_deref(),
            Some("warm"),
            "job {id} left its session's node"
        );
        let job = cluster.wait_state(id, JobState::Succeeded).await;
        let reason = job.route_reason.expect("route_reason");
        assert_eq!(
            reason.locality.as_deref(),
            Some("preferred: served this session last"),
            "{reason:?}"
        );
    }

    // `warm` busy with a job only it may run, held at the LLM: the
    // session's request waits the session bound, then goes to `cold`.
    cluster.fake.update_behavior(|b| b.hold = true);
    let blocker = cluster
        .submit(&SubmitJob {
            kind: "general_query".into(),
            prompt: Some("occupy warm".into()),
            requirements: kobo_protocol::Requirements {
                capabilities: vec!["pinned".into()],
                ..Default::default()
            },
            ..SubmitJob::default()
        })
        .await;
    cluster
        .wait_until("warm's call is held at the LLM", || async {
            cluster.fake.in_flight() == 1
        })
        .await;
    let moved = chat_in_session(&http, &url, &key, "conv-1");
    cluster
        .wait_until("the session's request is leased elsewhere", || async {
            cluster.fake.in_flight() == 2
        })
        .await;
    let (moved_id, state, node) = newest_of_session(&cluster, "conv-1").expect("job");
    assert_eq!(state, "leased");
    assert_eq!(node.as_deref(), Some("cold"));
    let waited: i64 = cluster
        .db()
        .query_row(
            "SELECT a.started_at - j.created_at FROM jobs j JOIN job_attempts a ON a.job_id = j.id WHERE j.id = ?1",
            [moved_id],
            |r| r.get(0),
        )
        .expect("wait");
    assert!(
        waited >= SESSION_WAIT_MS,
        "the request left its busy node after {waited} ms, before the {SESSION_WAIT_MS} ms bound"
    );
    cluster.fake.update_behavior(|b| b.hold = false);
    assert_eq!(moved.await.expect("task").expect("answer").status(), 200);
    let job = cluster.wait_state(moved_id, JobState::Succeeded).await;
    let reason = job.route_reason.expect("route_reason");
    assert_eq!(reason.chosen, "cold");
    assert_eq!(
        reason.locality.as_deref(),
        Some("no preferred node free within the wait bound"),
        "{reason:?}"
    );
    cluster.wait_state(blocker, JobState::Succeeded).await;
    // The session now continues where it was served last.
    let (_, _, last) = newest_of_session(&cluster, "conv-1").expect("job");
    assert_eq!(last.as_deref(), Some("cold"));
}
