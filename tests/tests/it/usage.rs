//! Usage accounting end to end: three keys use one fake LLM through two
//! agents (the official `openai` client, streamed and not, through the
//! gateway; the official `ollama` client; kobo jobs), and every account of
//! it (`GET /v1/usage`, `kobo-coord usage --json`, the `v_usage` view)
//! equals, token for token, what the fake reported: in sum and per key. A
//! read key sees only its own usage.

use std::collections::BTreeMap;

use kobo_client::ClientError;
use kobo_protocol::{AccessRole, KeyPolicy, UsageQuery, UsageRow};
use kobo_tests::cluster::{AgentSpec, Cluster, binary, job};
use serde_json::Value;

use crate::gateway::run;

const MODEL: &str = "qwen2.5:0.5b";

/// Requests, prompt and completion tokens.
type Tally = (u64, u64, u64);

fn add(tally: &mut Tally, prompt: u64, completion: u64) {
    tally.0 += 1;
    tally.1 += prompt;
    tally.2 += completion;
}

fn count(answer: &Value, field: &str) -> u64 {
    answer[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {answer}"))
}

/// Per actor, from usage rows grouped by key.
fn per_key(rows: &[UsageRow]) -> BTreeMap<String, Tally> {
    let mut out: BTreeMap<String, Tally> = BTreeMap::new();
    for row in rows {
        let tally = out
            .entry(row.key.clone().expect("grouped by key"))
            .or_default();
        tally.0 += row.requests;
        tally.1 += row.prompt_tokens;
        tally.2 += row.completion_tokens;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_per_key_equals_what_the_llm_reported() {
    let mut cluster = Cluster::builder().start().await;
    for node in ["usage-a", "usage-b"] {
        cluster
            .agent(AgentSpec::new(node, &["general_query"]))
            .await;
    }
    let policy = KeyPolicy::default;
    let (_, openai_key) = cluster
        .client_with_policy("openai-app", AccessRole::Submit, policy())
        .await;
    let (_, ollama_key) = cluster
        .client_with_policy("ollama-app", AccessRole::Submit, policy())
        .await;
    let (jobs_client, jobs_key) = cluster
        .client_with_policy("batch-jobs", AccessRole::Submit, policy())
        .await;
    let actor = |id: &str| format!("apikey:{id}");
    let mut expected: BTreeMap<String, Tally> = BTreeMap::new();

    let a = expected.entry(actor(&openai_key.id)).or_default();
    for _ in 0..2 {
        let whole = run(&cluster, &openai_key.key, MODEL, "openai_chat").await;
        add(
            a,
            count(&whole, "prompt_tokens"),
            count(&whole, "completion_tokens"),
        );
        let streamed = run(&cluster, &openai_key.key, MODEL, "openai_chat_stream").await;
        let usage = &streamed["usage"];
        add(
            a,
            count(usage, "prompt_tokens"),
            count(usage, "completion_tokens"),
        );
    }
    let b = expected.entry(actor(&ollama_key.id)).or_default();
    for scenario in ["ollama_chat", "ollama_chat_stream", "ollama_chat"] {
        let answer = run(&cluster, &ollama_key.key, MODEL, scenario).await;
        add(
            b,
            count(&answer, "prompt_eval_count"),
            count(&answer, "eval_count"),
        );
    }
    let c = expected.entry(actor(&jobs_key.id)).or_default();
    for prompt in ["count the stars", "name three rivers of europe", "hi"] {
        let id = jobs_client
            .submit(&job("general_query", prompt))
            .await
            .expect("submit")
            .id;
        let done = cluster.wait_done(id).await;
        let usage = done.output.expect("a result").usage;
        add(c, usage.prompt_tokens, usage.completion_tokens);
    }

    let fake = (
        cluster.fake.prompt_tokens_reported(),
        cluster.fake.completion_tokens_reported(),
    );
    let sum = expected
        .values()
        .fold((0, 0), |s, t| (s.0 + t.1, s.1 + t.2));
    assert_eq!(sum, fake, "what the clients saw is what the fake reported");
    assert!(fake.0 > 0 && fake.1 > 0);

    // A gateway answer may reach its client before the agent's result is
    // accepted: wait for every request to be accounted.
    let calls: u64 = expected.values().map(|t| t.0).sum();
    let admin = cluster.client();
    let all = UsageQuery::default();
    cluster
        .wait_until("every request accounted", || async {
            let rows = admin.usage(&all).await.expect("usage");
            rows.iter().map(|r| r.requests).sum::<u64>() == calls
        })
        .await;

    let api = admin.usage(&all).await.expect("usage");
    assert_eq!(per_key(&api), expected, "GET /v1/usage per key");
    let names = BTreeMap::from([
        (actor(&openai_key.id), "openai-app"),
        (actor(&ollama_key.id), "ollama-app"),
        (actor(&jobs_key.id), "batch-jobs"),
    ]);
    for row in &api {
        assert_eq!(row.model.as_deref(), Some(MODEL), "{row:?}");
        let key = row.key.as_deref().expect("grouped by key");
        assert_eq!(row.key_name.as_deref(), Some(names[key]), "{row:?}");
    }

    // Every grouping sums to the same totals.
    for group in ["node", "hour", "model,node", "hour,key,model,node", ""] {
        let rows = admin
            .usage(&UsageQuery {
                group: Some(group.into()),
                ..UsageQuery::default()
            })
            .await
            .expect("usage");
        let total = rows.iter().fold((0, 0, 0), |s, r| {
            (
                s.0 + r.requests,
                s.1 + r.prompt_tokens,
                s.2 + r.completion_tokens,
            )
        });
        assert_eq!(total, (calls, fake.0, fake.1), "group={group}: {rows:?}");
    }

    let output = tokio::process::Command::new(binary("kobo-coord"))
        .args(["usage", "--json", "--by", "key,model,node"])
        .arg("--data-dir")
        .arg(&cluster.data_dir)
        .output()
        .await
        .expect("run kobo-coord usage");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cli: Vec<UsageRow> = serde_json::from_slice(&output.stdout).expect("usage JSON");
    assert_eq!(per_key(&cli), expected, "kobo-coord usage --json per key");

    let db = cluster.db();
    let mut stmt = db
        .prepare("SELECT key, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens) FROM v_usage GROUP BY key")
        .expect("query v_usage");
    let view: BTreeMap<String, Tally> = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ),
            ))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(view, expected, "v_usage per key");

    // One key's usage, asked by its id.
    let only_c = admin
        .usage(&UsageQuery {
            key: Some(jobs_key.id.clone()),
            ..UsageQuery::default()
        })
        .await
        .expect("usage of one key");
    let c_only = BTreeMap::from([(actor(&jobs_key.id), expected[&actor(&jobs_key.id)])]);
    assert_eq!(per_key(&only_c), c_only);

    // A key sees only its own usage, and is refused another's.
    let (reader, _) = cluster.client_with_role(AccessRole::Read).await;
    assert_eq!(reader.usage(&all).await.expect("own usage"), Vec::new());
    let own = jobs_client.usage(&all).await.expect("own usage");
    assert_eq!(per_key(&own), c_only);
    match reader
        .usage(&UsageQuery {
            key: Some(openai_key.id.clone()),
            ..UsageQuery::default()
        })
        .await
    {
        Err(ClientError::Api {
            status,
            field,
            message,
            ..
        }) => {
            assert_eq!(status, 403, "{message}");
            assert_eq!(field.as_deref(), Some("key"), "{message}");
        }
        other => panic!("another key's usage: {other:?}"),
    }

    // Bad parameters name themselves.
    for (query, field) in [
        (
            UsageQuery {
                group: Some("key,modle".into()),
                ..UsageQuery::default()
            },
            "group",
        ),
        (
            UsageQuery {
                since: Some(2_000),
                until: Some(1_000),
                ..UsageQuery::default()
            },
            "until",
        ),
        (
            UsageQuery {
                key: Some("two words".into()),
                ..UsageQuery::default()
            },
            "key",
        ),
    ] {
        match admin.usage(&query).await {
            Err(ClientError::Api {
                status, field: f, ..
            }) => {
                assert_eq!((status, f.as_deref()), (400, Some(field)), "{query:?}");
            }
            other => panic!("{query:?}: {other:?}"),
        }
    }
}
