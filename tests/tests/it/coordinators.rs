//! Several coordinators, one leader, on PostgreSQL run by Patroni: two
//! `kobo-coord serve --database` processes (one CA and one set of keys),
//! agents and clients given both URLs, the ledger checking the database.
//!
//! 1. The leader SIGKILLed mid-run: the standby leads within 10 s.
//! 2. The PostgreSQL primary SIGKILLed: Patroni promotes the synchronous
//!    replica, the coordinators reconnect by themselves, nothing
//!    acknowledged is lost.
//! 3. The leader SIGSTOPped past its lock session's lease, then SIGCONTed:
//!    it writes nothing and stands by.

use std::path::Path;
use std::time::{Duration, Instant};

use kobo_client::{ApiClient, Endpoint};
use kobo_protocol::{DataDir, JobState, Readiness};
use kobo_tests::cluster::{AgentSpec, Cluster};
use kobo_tests::ledger::{Expect, Ledger};
use kobo_tests::pg::Patroni;
use nix::sys::signal::Signal;

/// The bound on a standby taking over from a dead leader.
const TAKEOVER_BUDGET: Duration = Duration::from_secs(10);
/// How long a submit retries through a takeover or a database failover.
const SUBMIT_PATIENCE: Duration = Duration::from_secs(90);
/// Jobs submitted before the fault, and after it.
const BEFORE: usize = 20;
const AFTER: usize = 20;

/// Two coordinators on one database: `a` started first (and so the first
/// leader), `b` with a copy of `a`'s CA and secret keys, agents on both URLs.
struct Pair {
    a: Cluster,
    b: Cluster,
    /// Both URLs, as agents and clients are given them.
    urls: String,
    client: ApiClient,
    _b_dir: tempfile::TempDir,
}

/// Files of a data directory the second coordinator must share with the
/// first: the CA, the server certificate, the API-key and sealing secrets,
/// the admin key.
fn shared_files(dir: &DataDir) -> [std::path::PathBuf; 8] {
    [
        dir.ca_cert(),
        dir.ca_key(),
        dir.server_cert(),
        dir.server_key(),
        dir.server_names(),
        dir.hmac_key(),
        dir.data_key(),
        dir.admin_key(),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

async fn pair(database: &str) -> Pair {
    let a = Cluster::builder()
        .serve_arg(&format!("--database={database}"))
        .start()
        .await;
    let b_dir = tempfile::Builder::new()
        .prefix("kobo-e2e-b-")
        .tempdir()
        .expect("temp dir");
    let (from, to) = (DataDir::new(&a.data_dir), DataDir::new(b_dir.path()));
    for (from, to) in shared_files(&from).iter().zip(shared_files(&to)) {
        if from.exists() {
            std::fs::copy(from, to).expect("copy a key file");
        }
    }
    let b = Cluster::builder()
        .serve_arg(&format!("--database={database}"))
        .data_dir(b_dir.path())
        .start()
        .await;
    let urls = format!("{},{}", a.url(), b.url());
    let client = ApiClient::new(&Endpoint {
        url: urls.clone(),
        ca_pem: std::fs::read(a.ca_path()).ok(),
        api_key: DataDir::new(&a.data_dir).local_admin_key(),
    })
    .expect("client of both");
    Pair {
        a,
        b,
        urls,
        client,
        _b_dir: b_dir,
    }
}

impl Pair {
    /// Which one leads (`a` or `b`), once one says so.
    async fn leader(&self) -> Side {
        let since = Instant::now();
        loop {
            for (side, cluster) in [(Side::A, &self.a), (Side::B, &self.b)] {
                if readiness(cluster).await.is_some_and(|r| r.role == "leader") {
                    return side;
                }
            }
            assert!(
                since.elapsed() < TAKEOVER_BUDGET,
                "nobody leads\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn side(&mut self, side: Side) -> &mut Cluster {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    async fn agents(&mut self, names: &[&str]) {
        for name in names {
            let spec = AgentSpec::new(name, &["general_query"])
                .max_workers(2)
                .via(&self.urls);
            self.a.agent(spec).await;
        }
    }

    async fn submit(&self, ledger: &mut Ledger, what: &str, n: usize) -> Vec<i64> {
        ledger
            .submit_many(
                &self.client,
                ("general_query", what),
                n,
                Expect::Succeeded,
                SUBMIT_PATIENCE,
            )
            .await
            .expect("submit")
    }

    /// Waits until every job is done, asking whichever coordinator leads.
    async fn wait_all_done(&self, ids: &[i64]) {
        let deadline = Instant::now() + SUBMIT_PATIENCE;
        for &id in ids {
            loop {
                match self.client.job(id).await {
                    Ok(detail) if detail.job.state == JobState::Succeeded => break,
                    Ok(detail) if detail.job.state.is_terminal() => {
                        panic!("job {id} ended {:?}\n{}", detail.job.state, self.logs())
                    }
                    _ => {}
                }
                assert!(
                    Instant::now() < deadline,
                    "job {id} not done\n{}",
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn logs(&self) -> String {
        format!(
            "=== coordinator a\n{}\n=== coordinator b\n{}",
            self.a.logs(),
            std::fs::read_to_string(self.b.coordinator_log_path()).unwrap_or_default()
        )
    }
}

/// `GET /readyz` of one coordinator: its role, or `None` while it does not
/// answer.
async fn readiness(cluster: &Cluster) -> Option<Readiness> {
    let ca = std::fs::read(cluster.ca_path()).ok()?;
    let http = kobo_client::http_client(Some(&ca)).ok()?;
    let answer = http
        .get(format!("{}/readyz", cluster.url()))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    answer.json().await.ok()
}

/// Waits until `cluster` reports itself leader; how long that took.
async fn wait_leader(cluster: &Cluster, since: Instant, patience: Duration) -> Duration {
    loop {
        if readiness(cluster).await.is_some_and(|r| r.role == "leader") {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < patience,
            "{} did not lead within {patience:?}",
            cluster.url()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The leader's epoch as the database has it.
async fn epoch(database: &str) -> i64 {
    let client = kobo_tests::pg::connect(database).await.expect("connect");
    client
        .query_one("SELECT epoch FROM kobo_leader WHERE id = 1", &[])
        .await
        .expect("kobo_leader")
        .get(0)
}

fn count(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_leader_coordinator_is_replaced_by_the_standby_within_10_s() {
    let db = Patroni::start(2).await;
    let url = db.multi_host_url();
    let mut pair = pair(&url).await;
    let leader = pair.leader().await;
    pair.a.fake.update_behavior(|b| b.latency_ms = 100);
    pair.agents(&["tokyo-01", "osaka-01"]).await;
    let mut ledger = Ledger::new();
    let mut ids = pair.submit(&mut ledger, "before", BEFORE).await;
    let epoch_before = epoch(&url).await;

    pair.side(leader).kill_coordinator().await;
    let killed = Instant::now();
    let took = wait_leader(pair.side(leader.other()), killed, TAKEOVER_BUDGET).await;
    ids.extend(pair.submit(&mut ledger, "after", AFTER).await);
    pair.wait_all_done(&ids).await;

    let verdict = ledger.check_postgres(&url).await;
    verdict.assert_ok(&pair.logs());
    assert_eq!(epoch(&url).await, epoch_before + 1, "one new term");
    println!(
        "leader coordinator SIGKILLed: the standby led after {:.2} s; {} jobs, {} acknowledged, 0 lost",
        took.as_secs_f64(),
        verdict.jobs,
        verdict.acknowledged
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_database_primary_fails_over_and_loses_nothing_acknowledged() {
    let mut db = Patroni::start(2).await;
    let url = db.multi_host_url();
    let mut pair = pair(&url).await;
    pair.leader().await;
    pair.a.fake.update_behavior(|b| b.latency_ms = 100);
    pair.agents(&["tokyo-01", "osaka-01"]).await;
    let mut ledger = Ledger::new();
    let mut ids = pair.submit(&mut ledger, "before", BEFORE).await;

    let old = db.primary().await;
    let killed = db.kill_member(old);
    let (_new, promoted_after) = db.wait_for_primary_other_than(old).await;
    // Submits made during the failover wait it out (503, retried).
    ids.extend(pair.submit(&mut ledger, "after", AFTER).await);
    let first_after = killed.elapsed();
    pair.wait_all_done(&ids).await;

    let verdict = ledger.check_postgres(&url).await;
    verdict.assert_ok(&pair.logs());
    let now_leading = pair.leader().await;
    println!(
        "database primary SIGKILLed: Patroni promoted the replica after {:.1} s; {AFTER} more jobs \
         acknowledged {:.1} s after the kill; {} jobs, {} acknowledged, 0 lost; coordinator {:?} leads",
        promoted_after.as_secs_f64(),
        first_after.as_secs_f64(),
        verdict.jobs,
        verdict.acknowledged,
        now_leading
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_leader_writes_nothing_when_it_wakes_and_stands_by() {
    let db = Patroni::start(2).await;
    let url = db.multi_host_url();
    let mut pair = pair(&url).await;
    let leader = pair.leader().await;
    pair.a.fake.update_behavior(|b| b.latency_ms = 100);
    pair.agents(&["tokyo-01", "osaka-01"]).await;
    let mut ledger = Ledger::new();
    let mut ids = pair.submit(&mut ledger, "before", BEFORE).await;
    let epoch_before = epoch(&url).await;

    let a_pid = nix::unistd::Pid::from_raw(
        pair.side(leader)
            .coordinator
            .as_ref()
            .and_then(|c| c.id())
            .expect("a runs") as i32,
    );
    nix::sys::signal::kill(a_pid, Signal::SIGSTOP).expect("sigstop");
    let stopped = Instant::now();
    // Its lock session idles out (5 s) and the standby takes over.
    let took = wait_leader(pair.side(leader.other()), stopped, Duration::from_secs(30)).await;
    ids.extend(pair.submit(&mut ledger, "while a sleeps", AFTER).await);
    let epoch_now = epoch(&url).await;
    assert_eq!(epoch_now, epoch_before + 1, "b's term");

    nix::sys::signal::kill(a_pid, Signal::SIGCONT).expect("sigcont");
    let woke = Instant::now();
    // It finds its session gone and stands by, naming b.
    let other_url = pair.side(leader.other()).url();
    loop {
        let ready = readiness(pair.side(leader)).await;
        if ready
            .as_ref()
            .is_some_and(|r| r.role == "standby" && r.leader.as_deref() == Some(&other_url))
        {
            break;
        }
        assert!(
            woke.elapsed() < Duration::from_secs(30),
            "a did not stand by: {ready:?}\n{}",
            pair.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stood_by = woke.elapsed();
    ids.extend(pair.submit(&mut ledger, "after a woke", AFTER).await);
    pair.wait_all_done(&ids).await;

    // Nothing of a's after the stop reached the database: the epoch is still
    // b's, every job completed once, and a's log shows any write it tried
    // was refused by the fence rather than committed.
    assert_eq!(epoch(&url).await, epoch_now, "a took no new term");
    let verdict = ledger.check_postgres(&url).await;
    verdict.assert_ok(&pair.logs());
    let refused = count(&pair.side(leader).coordinator_log_path(), "deposed");
    println!(
        "leader SIGSTOPped: the standby led after {:.2} s; woken, it stood by within {:.2} s \
         ({refused} log lines of fenced or deposed writes); {} jobs, {} acknowledged, 0 lost",
        took.as_secs_f64(),
        stood_by.as_secs_f64(),
        verdict.jobs,
        verdict.acknowledged
    );
}
