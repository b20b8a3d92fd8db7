//! The coordinator on PostgreSQL (`serve --database URL`): jobs submitted,
//! leased, done and checked by the ledger against the PostgreSQL tables; a
//! SIGKILLed coordinator restarted on the same database loses nothing; a
//! SIGTERMed one stops cleanly.

use std::time::Duration;

use kobo_protocol::JobState;
use kobo_tests::cluster::{AgentSpec, Cluster, job};
use kobo_tests::ledger::{Expect, Ledger};
use kobo_tests::pg::{Postgres, connect};

/// How long a submit retries through a restart.
const SUBMIT_PATIENCE: Duration = Duration::from_secs(30);

/// A cluster whose coordinator keeps its jobs in `pg`.
async fn on_postgres(pg: &Postgres) -> Cluster {
    Cluster::builder()
        .serve_arg(&format!("--database={}", pg.url()))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_on_postgres_runs_jobs_and_survives_a_sigkill() {
    let pg = Postgres::start().await;
    let mut cluster = on_postgres(&pg).await;
    cluster.fake.update_behavior(|b| b.latency_ms = 50);
    for node in ["tokyo-01", "osaka-01"] {
        cluster
            .agent(AgentSpec::new(node, &["general_query"]).max_workers(2))
            .await;
    }
    let mut ledger = Ledger::new();
    let first = ledger
        .submit_many(
            cluster.client(),
            ("general_query", "before the kill"),
            20,
            Expect::Succeeded,
            SUBMIT_PATIENCE,
        )
        .await
        .expect("submit");
    // A duplicate submit under a used idempotency key is the same job.
    let again = cluster
        .client()
        .submit(&kobo_protocol::SubmitJob {
            idempotency_key: Some("ledger-1".into()),
            ..job("general_query", "before the kill 0")
        })
        .await
        .expect("duplicate submit");
    assert_eq!(
        again.id, first[0],
        "the idempotency key names the first job"
    );
    cluster.wait_done(first[0]).await;

    cluster.kill_coordinator().await;
    cluster.start_coordinator().await;
    let second = ledger
        .submit_many(
            cluster.client(),
            ("general_query", "after the restart"),
            20,
            Expect::Succeeded,
            SUBMIT_PATIENCE,
        )
        .await
        .expect("submit after the restart");
    for id in first.iter().chain(&second) {
        let done = cluster.wait_done(*id).await;
        assert_eq!(done.state, JobState::Succeeded, "{}", cluster.logs());
    }
    let verdict = ledger.check_postgres(&pg.url()).await;
    verdict.assert_ok(&cluster.logs());
    assert_eq!(verdict.jobs, 40, "{verdict:?}");

    // Nothing was kept in a SQLite file beside it: the jobs are in PostgreSQL.
    let client = connect(&pg.url()).await.expect("connect");
    let nodes: i64 = client
        .query_one("SELECT count(*) FROM nodes WHERE status = 'active'", &[])
        .await
        .expect("nodes")
        .get(0);
    assert_eq!(nodes, 2, "both agents are active nodes in PostgreSQL");
    assert!(
        !cluster.db_path().exists(),
        "{} was created although the jobs are in PostgreSQL",
        cluster.db_path().display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_coordinator_on_postgres_with_exit_status_0() {
    // Closing the store's blocking PostgreSQL connections on a runtime
    // thread panicked (exit 101) once the engine was dropped.
    let pg = Postgres::start().await;
    let mut cluster = on_postgres(&pg).await;
    cluster
        .client()
        .submit(&job("general_query", "before the stop"))
        .await
        .expect("submit");
    let mut coordinator = cluster.coordinator.take().expect("running");
    let pid = nix::unistd::Pid::from_raw(coordinator.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("sigterm");
    let status = tokio::time::timeout(Duration::from_secs(30), coordinator.wait())
        .await
        .expect("stops within 30 s")
        .expect("wait");
    assert!(status.success(), "exit status {status}\n{}", cluster.logs());
}
