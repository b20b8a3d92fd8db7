//! The database is meant to be read with `sqlite3`: the views and every
//! example query in `sql/queries/` run against a live coordinator's file.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use kobo_protocol::JobState;
use kobo_tests::cluster::{AgentSpec, Cluster};
use kobo_tests::fake_llm::FakeFailure;

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
    let mut cluster = Cluster::builder().max_attempts(1).start().await;
    cluster
        .agent(AgentSpec::new("tokyo-01", &["general_query"]))
        .await;
    let ok = cluster.submit_prompt("general_query", "fine").await;
    assert_eq!(cluster.wait_done(ok).await.state, JobState::Succeeded);
    cluster
        .fake
        .update_behavior(|b| b.fail = Some(FakeFailure::status(500)));
    let failed = cluster.submit_prompt("general_query", "broken").await;
    assert_eq!(cluster.wait_done(failed).await.state, JobState::Dead);

    let db = cluster.db_path();
    let jobs = sqlite3(
        &db,
        "SELECT id, state, node_id, result_head, last_error FROM v_jobs ORDER BY id",
    );
    assert!(
        jobs.contains("succeeded") && jobs.contains("dead"),
        "{jobs}"
    );
    assert!(jobs.contains("tokyo-01"), "{jobs}");
    let stats = sqlite3(&db, "SELECT node_id, success_pct FROM v_node_stats");
    assert!(
        stats.contains("tokyo-01") && stats.contains("50.0"),
        "{stats}"
    );

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/queries");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("sql/queries")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "example queries in {}", dir.display());
    for file in files {
        let sql = std::fs::read_to_string(&file).expect("read query");
        let out = sqlite3(&db, &sql);
        assert!(!out.trim().is_empty(), "{} printed nothing", file.display());
    }
}
