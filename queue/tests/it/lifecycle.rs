//! The job lifecycle on every backend (SQLite, and PostgreSQL when
//! `KOBO_TEST_POSTGRES` is set): idempotent submit, leases with fencing
//! tokens, completion exactly once, expiry and requeue, and concurrent
//! leasers that never lease one job twice. Each test body runs once per
//! backend ([`each_backend`]).

use std::collections::HashSet;
use std::sync::Barrier;

use kobo_protocol::{
    CompleteRequest, JobState, Lease, LlmOutput, Outcome, RegisterRequest, SubmitJob, Usage,
};
use kobo_queue::store::sql::{Db, Dialect, args};
use kobo_queue::store::{self, Changes, StoreError};

use crate::backends::{Conn, TestDb, each_backend};
use crate::sealer;

const NOW: i64 = 1_800_000_000_000;
const TTL: u64 = 10_000;

fn register(conn: &mut Conn, node_id: &str, kinds: &[&str]) {
    let req = RegisterRequest {
        node_id: node_id.into(),
        instance_id: "i".into(),
        region: "eu-west-2".into(),
        capabilities: kinds.iter().map(|k| k.to_string()).collect(),
        max_workers: 4,
        gpu: false,
        backend: "sim".into(),
        models: vec![],
        agent_version: "t".into(),
        specialization: None,
        latitude: Some(51.5),
        longitude: None,
    };
    conn.write(|db| store::register_node(db, NOW, &req, None, &mut Changes::default()))
        .expect("register");
}

fn job(kind: &str, key: Option<&str>) -> SubmitJob {
    SubmitJob {
        kind: kind.into(),
        prompt: Some("p".into()),
        idempotency_key: key.map(str::to_string),
        ..SubmitJob::default()
    }
}

fn submit(conn: &mut Conn, job: &SubmitJob) -> kobo_protocol::SubmitResponse {
    conn.write(|db| store::insert_job(db, NOW, &sealer(), 3, "local", job, &mut Changes::default()))
        .expect("submit")
}

fn lease(conn: &mut Conn, now: i64, node_id: &str, n: u32) -> Vec<Lease> {
    try_lease(conn, now, node_id, n).expect("lease")
}

fn try_lease(conn: &mut Conn, now: i64, node_id: &str, n: u32) -> Result<Vec<Lease>, StoreError> {
    conn.write(|db| {
        let node = store::load_node(db, node_id)?;
        store::lease_for_node(
            db,
            now,
            &sealer(),
            TTL,
            &node.profile,
            n,
            &|_| "test".into(),
            &store::Share::OFF,
        )
    })
}

fn success(node_id: &str, lease_token: i64) -> CompleteRequest {
    CompleteRequest {
        node_id: node_id.into(),
        lease_token,
        outcome: Outcome::Succeeded {
            output: LlmOutput {
                text: "done".into(),
                model: "m".into(),
                usage: Usage {
                    prompt_tokens: 3,
                    completion_tokens: 4,
                    duration_ms: 5,
                    ..Usage::default()
                },
            },
        },
    }
}

fn complete(
    conn: &mut Conn,
    now: i64,
    job_id: i64,
    report: &CompleteRequest,
) -> Result<kobo_protocol::CompleteResponse, StoreError> {
    conn.write(|db| {
        store::complete_job(
            db,
            now,
            &sealer(),
            store::Retry {
                backoff: store::Backoff {
                    base_ms: 1000,
                    cap_ms: 10_000,
                },
                unit_random: 0.5,
            },
            job_id,
            report,
            &mut Changes::default(),
        )
    })
}

fn count(db: &dyn Db, sql: &str, args: &[&dyn kobo_queue::store::sql::Param]) -> i64 {
    db.one(sql, args, |r| r.get(0)).expect("count")
}

fn job_state(db: &dyn Db, job_id: i64) -> (String, i64, u32) {
    db.one(
        "SELECT state, lease_token, attempts FROM jobs WHERE id = ?1",
        args![job_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .expect("job")
}

#[test]
fn a_repeated_idempotency_key_returns_the_first_job() {
    each_backend(|test| {
        let mut conn = test.connect();
        let first = submit(&mut conn, &job("a", Some("k-1")));
        let again = submit(&mut conn, &job("a", Some("k-1")));
        let other = submit(&mut conn, &job("a", Some("k-2")));
        assert!(first.created && !again.created && other.created);
        assert_eq!(again.id, first.id);
        assert_eq!(again.state, JobState::Queued);
        assert_ne!(other.id, first.id);
        let db = conn.db();
        assert_eq!(count(db, "SELECT count(*) FROM jobs", args![]), 2);
        assert!(store::idempotency_known(db, "k-1").expect("known"));
        assert!(!store::idempotency_known(db, "k-3").expect("unknown"));
    });
}

#[test]
fn concurrent_submits_of_one_idempotency_key_make_one_job() {
    each_backend(|test| {
        let barrier = Barrier::new(4);
        let answers: Vec<_> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        let mut conn = test.connect();
                        barrier.wait();
                        submit(&mut conn, &job("a", Some("same")))
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .collect()
        });
        assert_eq!(
            answers.iter().filter(|a| a.created).count(),
            1,
            "{answers:?}"
        );
        assert!(answers.iter().all(|a| a.id == answers[0].id), "{answers:?}");
        let conn = test.connect();
        assert_eq!(count(conn.db(), "SELECT count(*) FROM jobs", args![]), 1);
    });
}

#[test]
fn a_stale_lease_token_cannot_complete_the_job() {
    each_backend(|test| {
        let mut conn = test.connect();
        register(&mut conn, "n1", &["a"]);
        let id = submit(&mut conn, &job("a", None)).id;
        let first = lease(&mut conn, NOW, "n1", 1);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].lease_token, 1);
        // The lease runs out; the job is leased again with the next token.
        let later = NOW + TTL as i64;
        let reaped = conn
            .write(|db| store::reap_expired(db, later, None, &mut Changes::default()))
            .expect("reap");
        assert_eq!(reaped, 1);
        let second = lease(&mut conn, later, "n1", 1);
        assert_eq!((second[0].job_id, second[0].lease_token), (id, 2));
        let stale = complete(&mut conn, later, id, &success("n1", 1));
        assert!(matches!(stale, Err(StoreError::StaleLease(_))), "{stale:?}");
        assert_eq!(job_state(conn.db(), id), ("leased".into(), 2, 2));
        let current = complete(&mut conn, later, id, &success("n1", 2)).expect("complete");
        assert_eq!(current.state, JobState::Succeeded);
        assert!(!current.duplicate);
        let attempts: Vec<(i64, String)> = conn
            .db()
            .many(
                "SELECT lease_token, outcome FROM job_attempts WHERE job_id = ?1 ORDER BY lease_token",
                args![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("attempts");
        assert_eq!(
            attempts,
            vec![(1, "expired".into()), (2, "succeeded".into())]
        );
    });
}

#[test]
fn two_completers_of_one_lease_complete_it_once() {
    each_backend(|test| {
        let mut conn = test.connect();
        register(&mut conn, "n1", &["a"]);
        let id = submit(&mut conn, &job("a", None)).id;
        let token = lease(&mut conn, NOW, "n1", 1)[0].lease_token;
        let barrier = Barrier::new(2);
        let answers: Vec<_> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        let mut conn = test.connect();
                        barrier.wait();
                        complete(&mut conn, NOW + 1, id, &success("n1", token)).expect("complete")
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .collect()
        });
        assert_eq!(
            answers.iter().filter(|a| !a.duplicate).count(),
            1,
            "{answers:?}"
        );
        assert!(answers.iter().all(|a| a.state == JobState::Succeeded));
        let db = conn.db();
        let succeeded =
            "SELECT count(*) FROM job_events WHERE job_id = ?1 AND to_state = 'succeeded'";
        assert_eq!(count(db, succeeded, args![id]), 1);
        let counted = "SELECT jobs_succeeded FROM nodes WHERE node_id = 'n1'";
        assert_eq!(count(db, counted, args![]), 1);
        assert_eq!(count(db, "SELECT requests FROM usage", args![]), 1);
        assert_eq!(store::tokens_used_since(db, "local", 0).expect("tokens"), 7);
    });
}

#[test]
fn an_expired_lease_is_requeued_then_dead_when_attempts_are_used_up() {
    each_backend(|test| {
        let mut conn = test.connect();
        register(&mut conn, "n1", &["a"]);
        let mut spec = job("a", None);
        spec.max_attempts = Some(2);
        let id = submit(&mut conn, &spec).id;
        let mut now = NOW;
        for (attempt, after) in [(1, "queued"), (2, "dead")] {
            let leases = lease(&mut conn, now, "n1", 1);
            assert_eq!(leases.len(), 1, "attempt {attempt}");
            assert_eq!(leases[0].attempt, attempt);
            // Renewed once: the expiry moves with it.
            let held = [kobo_protocol::HeldLease {
                job_id: id,
                lease_token: leases[0].lease_token,
            }];
            let (cancelled, revoked) = conn
                .write(|db| store::renew_leases(db, now + 1, TTL, "n1", &held))
                .expect("renew");
            assert!(cancelled.is_empty() && revoked.is_empty());
            let not_yet = conn
                .write(|db| {
                    store::reap_expired(db, now + TTL as i64, None, &mut Changes::default())
                })
                .expect("reap");
            assert_eq!(not_yet, 0, "renewed lease expired early");
            now += TTL as i64 + 1;
            let mut changes = Changes::default();
            let reaped = conn
                .write(|db| store::reap_expired(db, now, None, &mut changes))
                .expect("reap");
            assert_eq!(reaped, 1);
            assert_eq!(job_state(conn.db(), id).0, after);
            // A renewal with the lost lease is refused: the agent must stop.
            let (_, revoked) = conn
                .write(|db| store::renew_leases(db, now, TTL, "n1", &held))
                .expect("renew");
            assert_eq!(revoked, vec![id]);
        }
        assert!(lease(&mut conn, now, "n1", 1).is_empty());
    });
}

#[test]
fn concurrent_leasers_never_lease_one_job_twice() {
    const JOBS: usize = 120;
    each_backend(|test| {
        let mut conn = test.connect();
        register(&mut conn, "n1", &["a"]);
        register(&mut conn, "n2", &["a"]);
        conn.write(|db| {
            for _ in 0..JOBS {
                store::insert_job(
                    db,
                    NOW,
                    &sealer(),
                    3,
                    "local",
                    &job("a", None),
                    &mut Changes::default(),
                )?;
            }
            Ok(())
        })
        .expect("submit");
        let barrier = Barrier::new(2);
        let leased: Vec<Vec<i64>> = std::thread::scope(|s| {
            let threads: Vec<_> = ["n1", "n2"]
                .into_iter()
                .map(|node| {
                    let barrier = &barrier;
                    s.spawn(move || lease_until_empty(test, barrier, node))
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .collect()
        });
        let all: Vec<i64> = leased.iter().flatten().copied().collect();
        let distinct: HashSet<i64> = all.iter().copied().collect();
        assert_eq!(all.len(), distinct.len(), "a job was leased twice");
        assert_eq!(distinct.len(), JOBS);
        let db = conn.db();
        let leased_once =
            "SELECT count(*) FROM jobs WHERE state = 'leased' AND lease_token = 1 AND attempts = 1";
        assert_eq!(count(db, leased_once, args![]), JOBS as i64);
        assert_eq!(
            count(db, "SELECT count(*) FROM job_attempts", args![]),
            JOBS as i64
        );
    });
}

/// Leases for `node` in small transactions until no job is left queued.
fn lease_until_empty(test: &TestDb, barrier: &Barrier, node: &str) -> Vec<i64> {
    let mut conn = test.connect();
    barrier.wait();
    let mut mine = Vec::new();
    loop {
        let leases = lease(&mut conn, NOW, node, 3);
        mine.extend(leases.iter().map(|l| l.job_id));
        let queued = count(
            conn.db(),
            "SELECT count(*) FROM jobs WHERE state = 'queued'",
            args![],
        );
        if leases.is_empty() && queued == 0 {
            return mine;
        }
    }
}

#[test]
fn every_ported_query_prepares_on_its_backend() {
    each_backend(|test| {
        let conn = test.connect();
        for &(sqlite, postgres) in store::PORTED_QUERIES {
            let prepared = match &conn {
                Conn::Sqlite(conn) => conn.prepare(sqlite).map(drop).map_err(StoreError::from),
                Conn::Postgres(conn) => conn.prepare(postgres),
            };
            if let Err(err) = prepared {
                panic!(
                    "query does not prepare on {:?}: {err}\n{sqlite}",
                    test.dialect()
                );
            }
        }
    });
}

/// PostgreSQL only (SQLite has one writer at a time): while one transaction
/// is granting a job, another leaser passes over it at once instead of
/// waiting for it or leasing it too.
#[test]
fn a_leaser_passes_over_a_job_another_is_granting() {
    each_backend(|test| {
        if test.dialect() != Dialect::Postgres {
            return;
        }
        let mut conn = test.connect();
        register(&mut conn, "n1", &["a"]);
        register(&mut conn, "n2", &["a"]);
        let first = submit(&mut conn, &job("a", None)).id;
        let second = submit(&mut conn, &job("a", None)).id;
        let granting = Barrier::new(2);
        let passed_over = Barrier::new(2);
        let (held, other) = std::thread::scope(|s| {
            let holder = s.spawn(|| {
                let mut conn = test.connect();
                conn.write(|db| {
                    let node = store::load_node(db, "n1")?;
                    let leases = store::lease_for_node(
                        db,
                        NOW,
                        &sealer(),
                        TTL,
                        &node.profile,
                        1,
                        &|_| "test".into(),
                        &store::Share::OFF,
                    )?;
                    // Still in the transaction: the job's row stays locked.
                    granting.wait();
                    passed_over.wait();
                    Ok(leases)
                })
                .expect("lease")
            });
            granting.wait();
            let mut conn = test.connect();
            if let Conn::Postgres(pg) = &mut conn {
                // Waiting for the lock is the failure: make it an error.
                pg.batch_execute("SET lock_timeout = '5s'")
                    .expect("lock_timeout");
            }
            let other = try_lease(&mut conn, NOW, "n2", 2);
            passed_over.wait();
            let other = other.expect("lease passing over the locked job");
            (holder.join().expect("holder"), other)
        });
        assert_eq!(
            held.iter().map(|l| l.job_id).collect::<Vec<_>>(),
            vec![first]
        );
        assert_eq!(
            other.iter().map(|l| l.job_id).collect::<Vec<_>>(),
            vec![second]
        );
    });
}
