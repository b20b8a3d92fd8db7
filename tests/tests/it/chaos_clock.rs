//! The coordinator's wall clock jumps while it serves (libfaketime with a
//! timestamp file it rereads: two hours forward, then an hour back), with
//! jobs running that outlive the lease TTL three times over: no lease runs
//! out, no heartbeat fails, no node is lost, an agent enrolls after each
//! jump, a delayed job starts on time. The coordinator counts time from the
//! wall clock read at start plus its monotonic clock (`kobo_queue::clock`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kobo_protocol::{JobState, SubmitJob};
use kobo_tests::cluster::{AgentSpec, Cluster};
use kobo_tests::ledger::{Expect, Ledger};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
const SUBMIT_PATIENCE: Duration = Duration::from_secs(60);

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The UTC hour of day `offset_h` hours from now.
fn hour_from_now(offset_h: i64) -> i64 {
    (unix_ms() / 3_600_000 + offset_h).rem_euclid(24)
}

/// `line` without its terminal colour codes (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jump_under_the_coordinator_moves_no_deadline() {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install Debian's faketime package (scripts/install-test-deps does)"
    );
    let stamps = tempfile::tempdir().expect("temp dir");
    let stamp = stamps.path().join("faketime");
    std::fs::write(&stamp, "+0").expect("timestamp file");
    let mut cluster = Cluster::builder()
        .coordinator_env("LD_PRELOAD", LIBFAKETIME)
        .coordinator_env("FAKETIME_TIMESTAMP_FILE", &stamp.display().to_string())
        .coordinator_env("FAKETIME_NO_CACHE", "1")
        // Only the wall clock jumps, as it does on a real machine.
        .coordinator_env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .start()
        .await;
    let ttl = Duration::from_millis(cluster.settings.lease_ttl_ms);
    cluster
        .fake
        .update_behavior(|b| b.latency_ms = (ttl * 3).as_millis() as u64);
    cluster
        .agent(AgentSpec::new("steady-01", &["general_query"]).max_workers(2))
        .await;
    let mut ledger = Ledger::new();
    for (offset, hours) in [("+2h", 2), ("-1h", -1)] {
        let ids = ledger
            .submit_many(
                cluster.client(),
                ("general_query", &format!("across the jump {offset}")),
                2,
                Expect::Succeeded,
                SUBMIT_PATIENCE,
            )
            .await
            .expect("submit");
        cluster
            .wait_until("both calls are running", || async {
                cluster.fake.in_flight() == 2
            })
            .await;
        std::fs::write(&stamp, offset).expect("jump");
        // An agent enrolling now is logged with the coordinator's (jumped)
        // wall time: the jump took.
        let node = format!("after-{}", if hours > 0 { "forward" } else { "back" });
        cluster
            .agent(AgentSpec::new(&node, &["other_kind"]).max_workers(1))
            .await;
        let log = std::fs::read_to_string(cluster.coordinator_log_path()).unwrap_or_default();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("agent registered") && l.contains(&node))
            .unwrap_or_else(|| panic!("no registration of {node} in the log:\n{log}"));
        let hour: Option<i64> = strip_ansi(line).get(11..13).and_then(|h| h.parse().ok());
        assert_eq!(
            hour,
            Some(hour_from_now(hours)),
            "the coordinator's wall clock is {offset} off: {line}"
        );
        for id in ids {
            let done = cluster.wait_done(id).await;
            assert_eq!(done.state, JobState::Succeeded);
            assert_eq!(done.attempts, 1, "job {id}'s lease ran out across the jump");
        }
    }
    // A delayed job starts after its delay, not an hour late or at once.
    let delay_ms = 1500;
    let submitted = unix_ms();
    let delayed = ledger
        .submit(
            cluster.client(),
            SubmitJob {
                kind: "general_query".into(),
                prompt: Some("delayed".into()),
                run_at: Some(submitted + delay_ms),
                ..SubmitJob::default()
            },
            Expect::Succeeded,
            SUBMIT_PATIENCE,
        )
        .await
        .expect("submit");
    cluster.wait_state(delayed, JobState::Succeeded).await;
    let started: i64 = cluster
        .db()
        .query_row(
            "SELECT started_at FROM job_attempts WHERE job_id = ?1",
            [delayed],
            |r| r.get(0),
        )
        .expect("attempt");
    let late = started - (submitted + delay_ms);
    assert!(
        (0..5_000).contains(&late),
        "the delayed job started {late} ms after its run_at"
    );
    let released: i64 = cluster
        .db()
        .query_row(
            "SELECT count(*) FROM job_attempts WHERE outcome <> 'succeeded'",
            [],
            |r| r.get(0),
        )
        .expect("attempts");
    assert_eq!(released, 0, "no lease ran out or was released");
    let lost: i64 = cluster
        .db()
        .query_row(
            "SELECT count(*) FROM job_events WHERE detail LIKE '%lost%'",
            [],
            |r| r.get(0),
        )
        .expect("events");
    assert_eq!(lost, 0, "no node was noticed lost");
    let agent_log = cluster.agents[0].log_text();
    assert!(
        !agent_log.contains("heartbeat failed") && !agent_log.contains("heartbeat refused"),
        "heartbeats kept working:\n{agent_log}"
    );
    ledger.check(&cluster.db_path()).assert_ok(&cluster.logs());
    eprintln!(
        "clock jump: the coordinator's wall clock jumped +2h then -1h under jobs of {:?} (3x the {ttl:?} TTL): one lease each, \
         no heartbeat failed, agents enrolled after each jump, a {delay_ms} ms delayed job started {late} ms after its run_at",
        ttl * 3
    );
}
