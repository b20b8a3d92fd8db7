//! The database is meant to be read with `sqlite3`: the views and every
//! example query in `sql/queries/` run against a live coordinator's file.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use kobo_protocol::JobState;
use kobo_tests::cluster::{AgentSpec, Cluster};
use kobo_tests::fake_llm::{FakeBehavior, FakeFailure};

fn sqlite3(db: &Path, sql: &str) -> String {
    let mut child = Command::new("sqlite3")
        .args(["-readonly", "-header", "-column", "-bail"])
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sqlite3 is installed (scripts/install-test-deps installs the sqlite3 package)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(sql.as_bytes())
        .expect("write sql");
    let output = child.wait_with_output().expect("sqlite3 output");
    assert!(
        output.status.success(),
        "sqlite3 failed on {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_and_example_queries_run_in_sqlite3() {
    // A little LLM latency, so tokens per second are measurable.
    let mut cluster = Cluster::builder()
        .max_attempts(1)
        .fake(FakeBehavior {
            latency_ms: 20,
            ..FakeBehavior::default()
        })
        .start()
        .await;
    cluster
        .agent(
            AgentSpec::new("tokyo-01", &["general_query", "code_generation"])
                .region("ap-northeast-1"),
        )
        .await;
    cluster
        .agent(AgentSpec::new("london-01", &["data_analysis"]).region("eu-west-2"))
        .await;
    let ok = cluster.submit_prompt("general_query", "fine").await;
    assert_eq!(cluster.wait_done(ok).await.state, JobState::Succeeded);
    let code = cluster.submit_prompt("code_generation", "fizzbuzz").await;
    assert_eq!(cluster.wait_done(code).await.state, JobState::Succeeded);
    let analysis = cluster.submit_prompt("data_analysis", "3, 5, 8").await;
    assert_eq!(cluster.wait_done(analysis).await.state, JobState::Succeeded);
    cluster
        .fake
        .update_behavior(|b| b.fail = Some(FakeFailure::status(500)));
    let failed = cluster.submit_prompt("general_query", "broken").await;
    assert_eq!(cluster.wait_done(failed).await.state, JobState::Dead);
    // A job no node can run: the queue is not empty.
    let waiting = cluster.submit_prompt("translation", "bonjour").await;
    cluster
        .wait_until("heartbeats with metrics from both nodes", || async {
            cluster
                .db()
                .query_row(
                    "SELECT count(DISTINCT node_id) FROM node_metrics",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap_or(0)
                == 2
        })
        .await;

    let db = cluster.db_path();
    let jobs = sqlite3(
        &db,
        "SELECT id, state, node_id, region, wait_ms, run_ms, route_reason, result_head, last_error FROM v_jobs ORDER BY id",
    );
    assert!(
        jobs.contains("succeeded") && jobs.contains("dead") && jobs.contains("queued"),
        "{jobs}"
    );
    assert!(
        jobs.contains("tokyo-01") && jobs.contains("ap-northeast-1"),
        "{jobs}"
    );
    assert!(
        jobs.contains("london-01") && jobs.contains("eu-west-2"),
        "{jobs}"
    );
    let stats = sqlite3(
        &db,
        "SELECT node_id, jobs_done, success_pct, p50_response_ms, p95_response_ms, tokens_per_s, last_seen FROM v_node_stats ORDER BY node_id",
    );
    assert!(
        stats.contains("tokyo-01") && stats.contains("66.7"),
        "2 of 3 attempts on tokyo-01 succeeded: {stats}"
    );
    let percentiles = sqlite3(
        &db,
        "SELECT count(*) FROM v_node_stats WHERE p50_response_ms IS NOT NULL AND p95_response_ms >= p50_response_ms AND tokens_per_s > 0",
    );
    assert!(percentiles.contains('2'), "{percentiles}");
    let queue = sqlite3(&db, "SELECT state, kind, jobs FROM v_queue");
    assert!(
        queue.contains("queued") && queue.contains("translation"),
        "{queue}"
    );

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/queries");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("sql/queries")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(files.len() >= 12, "example queries in {}", dir.display());
    let mut outputs = std::collections::BTreeMap::new();
    for file in files {
        let sql = std::fs::read_to_string(&file).expect("read query");
        let out = sqlite3(&db, &sql);
        assert!(!out.trim().is_empty(), "{} printed nothing", file.display());
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        outputs.insert(name, out);
    }
    let expect = |file: &str, needles: &[&str]| {
        let out = &outputs[file];
        for needle in needles {
            assert!(out.contains(needle), "{file}.sql lacks {needle:?}:\n{out}");
        }
    };
    expect(
        "busiest_nodes_this_hour",
        &["tokyo-01", "london-01", "ap-northeast-1"],
    );
    expect(
        "slowest_kinds",
        &["code_generation", "data_analysis", "general_query"],
    );
    expect("failures_by_error", &["500", "tokyo-01", "general_query"]);
    expect("jobs_per_region_per_day", &["ap-northeast-1", "eu-west-2"]);
    expect("queue_now", &["translation", "queued"]);
    // The three successful jobs, all the local admin key's.
    let usage = &outputs["usage_by_key"];
    let admin = usage
        .lines()
        .find(|l| l.starts_with("apikey:") && l.contains("local-admin"))
        .unwrap_or_else(|| panic!("usage_by_key.sql lacks the admin key:\n{usage}"));
    assert_eq!(admin.split_whitespace().nth(2), Some("3"), "{usage}");
    expect(
        "node_metrics_last_hour",
        &["tokyo-01", "london-01", "(latest)"],
    );
    assert!(waiting > failed);
}
