//! Idle nodes' heartbeats are answered from memory and written in bulk a
//! moment later (`queue/src/beats.rs`): they still reach the database, the
//! node is never declared lost for a heartbeat kept in memory, its metrics
//! are sampled at most every 15 s, and it still takes work.

use kobo_protocol::JobState;
use kobo_tests::cluster::{AgentSpec, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_heartbeats_reach_the_database_and_never_lose_their_node() {
    let mut cluster = Cluster::builder().heartbeat_ms(300).start().await;
    cluster.agent(AgentSpec::new("idle", &["chat"])).await;
    let db = cluster.db();
    let column = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).expect(sql) };
    let registered = column("SELECT registered_at FROM nodes WHERE node_id = 'idle'");
    // Twenty heartbeat intervals, each lost deadline (900 ms) a third of
    // them: every sweep in between had to count the kept heartbeats.
    cluster
        .wait_until("six seconds of heartbeats in the database", || async {
            column("SELECT last_heartbeat_at FROM nodes WHERE node_id = 'idle'") - registered
                >= 6_000
        })
        .await;
    let status: String = db
        .query_row("SELECT status FROM nodes WHERE node_id = 'idle'", [], |r| {
            r.get(0)
        })
        .expect("status");
    assert_eq!(status, "active");
    let logs = cluster.logs();
    assert!(
        !logs.contains("node lost"),
        "an answered node was declared lost:\n{logs}"
    );
    let samples = column("SELECT count(*) FROM node_metrics WHERE node_id = 'idle'");
    assert_eq!(
        samples, 1,
        "one metrics sample per 15 s, not one per heartbeat"
    );

    let id = cluster.submit_prompt("chat", "still here?").await;
    assert_eq!(cluster.wait_done(id).await.state, JobState::Succeeded);
}
