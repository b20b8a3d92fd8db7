//! Idempotency keys under concurrent duplicate submits.

use std::collections::BTreeSet;

use kobo_protocol::SubmitJob;
use kobo_tests::cluster::{Cluster, job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicate_submits_make_one_job() {
    let cluster = Cluster::builder().start().await;
    let keyed = SubmitJob {
        idempotency_key: Some("order-42".into()),
        ..job("general_query", "once")
    };
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let client = cluster.client().clone();
        let keyed = keyed.clone();
        tasks.push(tokio::spawn(async move { client.submit(&keyed).await }));
    }
    let mut ids = BTreeSet::new();
    let mut created = 0;
    for task in tasks {
        let answer = task.await.expect("task").expect("submit");
        ids.insert(answer.id);
        created += usize::from(answer.created);
    }
    assert_eq!(ids.len(), 1, "every submit returned the same job");
    assert_eq!(created, 1, "exactly one submit created it");
    let rows: i64 = cluster
        .db()
        .query_row(
            "SELECT count(*) FROM jobs WHERE idempotency_key = 'order-42'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(rows, 1);
    let other = cluster
        .submit(&SubmitJob {
            idempotency_key: Some("order-43".into()),
            ..job("general_query", "once")
        })
        .await;
    assert!(!ids.contains(&other));
}
