//! Real PostgreSQL under the store: the throwaway server every PostgreSQL
//! test starts, and a Patroni failover of the database itself — the
//! synchronous standby is promoted and no acknowledged commit is lost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kobo_tests::pg::{Patroni, Postgres, connect};
use tokio_postgres::types::ToSql;

/// The expectation for a lost primary to a writable new one.
const FAILOVER_BUDGET: Duration = Duration::from_secs(40);
/// Commits acknowledged before the primary is killed, and after.
const WRITES_BEFORE: usize = 100;
const WRITES_AFTER: usize = 50;
/// How long the writer's waits may take, as events, before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);
/// Longest one connect or one commit may take before the writer gives up
/// on that connection (a dead host refuses at once on loopback).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between reconnect attempts while no member takes writes.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throwaway_postgres_starts_and_serves_sql() {
    let (first, second) = tokio::join!(Postgres::start(), Postgres::start());
    assert_ne!(first.port(), second.port());
    for (server, body) in [(&first, "first"), (&second, "second")] {
        let client = connect(&server.url()).await.expect("connect");
        let row = client
            .query_one(
                "SELECT current_database(), current_setting('server_version_num')::int",
                &[],
            )
            .await
            .expect("version");
        assert_eq!(row.get::<_, String>(0), "kobo");
        let version: i32 = row.get(1);
        assert!(
            (150_000..160_000).contains(&version),
            "PostgreSQL {version}"
        );
        client
            .batch_execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)")
            .await
            .expect("create table");
        client
            .execute("INSERT INTO notes VALUES ($1, $2)", &[&1_i64, &body])
            .await
            .expect("insert");
    }
    // Each server has its own row only: nothing shared.
    for (server, body) in [(&first, "first"), (&second, "second")] {
        let client = connect(&server.url()).await.expect("connect");
        let rows: Vec<(i64, String)> = client
            .query("SELECT id, body FROM notes", &[])
            .await
            .expect("select")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(rows, [(1, body.to_string())]);
    }
    let extra = first.create_database("another").await;
    connect(&extra)
        .await
        .expect("connect to a created database");

    let (url, dir) = (first.url(), first.dir().to_path_buf());
    drop(first);
    assert!(
        connect(&url).await.is_err(),
        "a dropped server still answers"
    );
    assert!(!dir.exists(), "{} outlived the server", dir.display());
    let client = connect(&second.url()).await.expect("the other one runs on");
    client.query_one("SELECT 1", &[]).await.expect("select");
}

/// What the writer saw: every id it sent, acknowledged or not.
#[derive(Default)]
struct Writes {
    /// Acknowledged commits: id, when, and the server port that acknowledged.
    acknowledged: Vec<(i64, Instant, u16)>,
    /// Sent, then the connection failed: committed or not, nobody knows.
    unknown: Vec<i64>,
}

impl Writes {
    fn acknowledged_since(&self, since: Instant) -> usize {
        self.acknowledged
            .iter()
            .filter(|(_, at, _)| *at > since)
            .count()
    }
}

/// Inserts one row per commit through `url` until told to stop, each with a
/// fresh id (an id whose commit went unanswered is never sent again, so a
/// duplicate would be the database's). Reconnects by itself.
async fn writer(url: String, writes: Arc<Mutex<Writes>>, stop: Arc<AtomicBool>) {
    let mut next_id = 1_i64;
    let mut client = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(connected) = client.as_ref() else {
            match tokio::time::timeout(CALL_TIMEOUT, connect(&url)).await {
                Ok(Ok(connected)) => client = Some(connected),
                _ => tokio::time::sleep(RECONNECT_PAUSE).await,
            }
            continue;
        };
        let id = next_id;
        next_id += 1;
        let params: [&(dyn ToSql + Sync); 1] = [&id];
        let insert = connected.query_one(
            "INSERT INTO ledger (id) VALUES ($1) RETURNING inet_server_port()",
            &params,
        );
        match tokio::time::timeout(CALL_TIMEOUT, insert).await {
            Ok(Ok(row)) => {
                let port = u16::try_from(row.get::<_, i32>(0)).expect("a port");
                let mut writes = writes.lock().unwrap();
                writes.acknowledged.push((id, Instant::now(), port));
            }
            _ => {
                writes.lock().unwrap().unknown.push(id);
                client = None;
            }
        }
    }
}

/// Waits until `done` holds for the writes; fails after [`PATIENCE`].
async fn wait_for_writes(writes: &Mutex<Writes>, what: &str, done: impl Fn(&Writes) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done(&writes.lock().unwrap()) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_promotes_the_sync_replica_and_loses_nothing_acknowledged() {
    let started = Instant::now();
    let mut cluster = Patroni::start(2).await;
    let ready = started.elapsed();
    let old = cluster.primary().await;
    let url = cluster.multi_host_url();
    connect(&url)
        .await
        .expect("connect through the multi-host URL")
        .batch_execute("CREATE TABLE ledger (seq bigserial PRIMARY KEY, id bigint NOT NULL)")
        .await
        .expect("create table");

    let writes = Arc::new(Mutex::new(Writes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn(writer(url, writes.clone(), stop.clone()));
    wait_for_writes(&writes, "commits on the first primary", |w| {
        w.acknowledged.len() >= WRITES_BEFORE
    })
    .await;

    let killed_at = cluster.kill_member(old);
    let (new, promoted_after) = cluster.wait_for_primary_other_than(old).await;
    wait_for_writes(&writes, "commits on the new primary", |w| {
        w.acknowledged_since(killed_at) >= WRITES_AFTER
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    writing.await.expect("writer");

    let writes = std::mem::take(&mut *writes.lock().unwrap());
    let (old_port, new_port) = (cluster.pg_port(old), cluster.pg_port(new));
    // Acknowledgements are in commit order (one writer). Before the kill
    // every one is the old primary's; a commit the old primary made just
    // before it died may be acknowledged just after `killed_at`; once the
    // new primary has acknowledged one, the old one acknowledges no more.
    let first_on_new = writes
        .acknowledged
        .iter()
        .position(|&(_, _, port)| port == new_port)
        .expect("a write on the new primary");
    for (idx, &(id, at, port)) in writes.acknowledged.iter().enumerate() {
        let allowed: &[u16] = if idx >= first_on_new {
            &[new_port]
        } else if at < killed_at {
            &[old_port]
        } else {
            &[old_port, new_port]
        };
        assert!(
            allowed.contains(&port),
            "id {id} acknowledged by port {port} (old {old_port}, new {new_port})"
        );
    }
    let first_write_after = writes.acknowledged[first_on_new].1 - killed_at;

    // The new primary alone, directly: every acknowledged id once.
    let client = connect(&cluster.member_url(new))
        .await
        .expect("connect to the new primary");
    let mut stored: BTreeMap<i64, i64> = BTreeMap::new();
    for row in client
        .query("SELECT id FROM ledger", &[])
        .await
        .expect("read ledger")
    {
        *stored.entry(row.get(0)).or_default() += 1;
    }
    let lost: Vec<i64> = writes
        .acknowledged
        .iter()
        .map(|&(id, _, _)| id)
        .filter(|id| !stored.contains_key(id))
        .collect();
    let twice: Vec<i64> = stored
        .iter()
        .filter(|&(_, &n)| n > 1)
        .map(|(&id, _)| id)
        .collect();
    let invented: Vec<i64> = stored
        .keys()
        .copied()
        .filter(|id| {
            !writes.unknown.contains(id) && !writes.acknowledged.iter().any(|(a, _, _)| a == id)
        })
        .collect();
    let unknown_kept = writes
        .unknown
        .iter()
        .filter(|id| stored.contains_key(id))
        .count();
    println!(
        "patroni failover: cluster ready in {:.1} s; {} killed; {} promoted after {:.1} s; \
         first acknowledged write on it {:.1} s after the kill; {} commits acknowledged \
         ({} before the kill), {} lost, {} unanswered ({} of them committed)",
        ready.as_secs_f64(),
        cluster.name(old),
        cluster.name(new),
        promoted_after.as_secs_f64(),
        first_write_after.as_secs_f64(),
        writes.acknowledged.len(),
        writes.acknowledged.len() - writes.acknowledged_since(killed_at),
        lost.len(),
        writes.unknown.len(),
        unknown_kept,
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    assert!(invented.is_empty(), "stored but never sent: {invented:?}");
    assert!(
        first_write_after <= FAILOVER_BUDGET,
        "the first write on the new primary came {first_write_after:?} after the kill"
    );
}
