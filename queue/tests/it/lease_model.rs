//! The lease state machine against a simple model: random sequences of
//! submit, lease, heartbeat, complete (with current, stale and future lease
//! tokens), cancel and the passing of time; after every step the database
//! must agree with the model, and the invariants hold.

use std::collections::HashMap;

use kobo_protocol::{
    CompleteRequest, HeldLease, JobState, LlmOutput, Outcome, RegisterRequest, SubmitJob,
};
use kobo_queue::routing::NodeProfile;
use kobo_queue::store::{self, Backoff, Changes, Retry, StoreError};
use proptest::prelude::*;
use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::{sealer, temp_db};

const TTL: u64 = 10_000;
const LOST_AFTER: u64 = 9_000;
const BACKOFF: Backoff = Backoff {
    base_ms: 2_000,
    cap_ms: 60_000,
};
/// The jitter the test passes to the store (the store takes it as input).
const JITTER: f64 = 0.5;
const KINDS: [&str; 2] = ["a", "b"];
/// Capabilities of the three nodes.
const NODE_KINDS: [&[&str]; 3] = [&["a"], &["a", "b"], &["b"]];

#[derive(Debug, Clone)]
enum Op {
    Submit {
        kind: usize,
        max_attempts: u32,
    },
    Lease {
        node: usize,
        n: u32,
    },
    Heartbeat {
        node: usize,
    },
    Complete {
        job: usize,
        token_offset: i64,
        success: bool,
        retryable: bool,
    },
    Cancel {
        job: usize,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, 1..4u32).prop_map(|(kind, max_attempts)| Op::Submit { kind, max_attempts }),
        3 => (0..3usize, 1..3u32).prop_map(|(node, n)| Op::Lease { node, n }),
        2 => (0..3usize).prop_map(|node| Op::Heartbeat { node }),
        5 => (0..8usize, token_offset(), any::<bool>(), any::<bool>()).prop_map(|(job, token_offset, success, retryable)| Op::Complete { job, token_offset, success, retryable }),
        1 => (0..8usize).prop_map(|job| Op::Cancel { job }),
        3 => (0..15_000u64).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// Mostly the current lease token; sometimes a stale or a future one.
fn token_offset() -> impl Strategy<Value = i64> {
    prop_oneof![4 => Just(0i64), 1 => Just(-1i64), 1 => Just(1i64)]
}

#[derive(Debug, Clone)]
struct MJob {
    state: JobState,
    kind: usize,
    attempts: u32,
    max_attempts: u32,
    token: i64,
    node: Option<usize>,
    expires: i64,
    run_at: i64,
    ready_at: i64,
    /// Finished attempts by token: (node, "succeeded" | "failed").
    reported: HashMap<i64, (usize, &'static str)>,
}

struct Model {
    now: i64,
    jobs: Vec<MJob>,
    last_heartbeat: [i64; 3],
    lost: [bool; 3],
}

fn node_id(node: usize) -> String {
    format!("node-{node}")
}

fn profile(node: usize) -> NodeProfile {
    NodeProfile {
        node_id: node_id(node),
        region: "eu-west-2".into(),
        capabilities: NODE_KINDS[node].iter().map(|k| k.to_string()).collect(),
        gpu: false,
        models: vec![],
        max_workers: 4,
    }
}

fn write<R>(conn: &mut Connection, f: impl FnOnce(&Transaction<'_>) -> R) -> R {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("tx");
    let out = f(&tx);
    tx.commit().expect("commit");
    out
}

impl Model {
    /// A leased job loses its lease (expired or node lost).
    fn release(&mut self, idx: usize) {
        let now = self.now;
        let job = &mut self.jobs[idx];
        if job.attempts >= job.max_attempts {
            job.state = JobState::Dead;
        } else {
            job.state = JobState::Queued;
            job.ready_at = now;
        }
    }

    fn tick(&mut self) {
        for node in 0..3 {
            if !self.lost[node] && self.last_heartbeat[node] < self.now - LOST_AFTER as i64 {
                self.lost[node] = true;
                for idx in 0..self.jobs.len() {
                    if self.jobs[idx].state == JobState::Leased && self.jobs[idx].node == Some(node)
                    {
                        self.release(idx);
                    }
                }
            }
        }
        for idx in 0..self.jobs.len() {
            if self.jobs[idx].state == JobState::Leased && self.jobs[idx].expires <= self.now {
                self.release(idx);
            }
        }
        for job in &mut self.jobs {
            if job.state == JobState::Scheduled && job.run_at <= self.now {
                job.state = JobState::Queued;
                job.ready_at = self.now;
            }
        }
    }

    fn touch(&mut self, node: usize) {
        self.last_heartbeat[node] = self.now;
        self.lost[node] = false;
    }
}

fn check(conn: &Connection, model: &Model) -> Result<(), TestCaseError> {
    let rows: Vec<(i64, String, u32, i64, Option<String>)> = conn
        .prepare("SELECT id, state, attempts, lease_token, node_id FROM jobs ORDER BY id")
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect()
        })
        .expect("rows");
    prop_assert_eq!(rows.len(), model.jobs.len());
    for (row, job) in rows.iter().zip(&model.jobs) {
        let expected = (
            job.state.as_str(),
            job.attempts,
            job.token,
            job.node.map(node_id),
        );
        prop_assert_eq!(
            (row.1.as_str(), row.2, row.3, row.4.clone()),
            expected,
            "job {}",
            row.0
        );
        prop_assert!(job.attempts <= job.max_attempts);
    }
    let twice: i64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT job_id FROM job_attempts WHERE outcome = 'succeeded' GROUP BY job_id HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )
        .expect("count");
    prop_assert_eq!(twice, 0, "a job succeeded twice");
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (_dir, mut conn) = temp_db();
    let mut model = Model {
        now: 1_800_000_000_000,
        jobs: Vec::new(),
        last_heartbeat: [0; 3],
        lost: [false; 3],
    };
    for (node, kinds) in NODE_KINDS.iter().enumerate() {
        let req = RegisterRequest {
            node_id: node_id(node),
            instance_id: "i".into(),
            region: "eu-west-2".into(),
            capabilities: kinds.iter().map(|k| k.to_string()).collect(),
            max_workers: 4,
            gpu: false,
            backend: "sim".into(),
            models: vec![],
            agent_version: "t".into(),
            specialization: None,
            latitude: None,
            longitude: None,
        };
        let now = model.now;
        write(&mut conn, |tx| {
            store::register_node(tx, now, &req, None, &mut Changes::default())
        })
        .expect("register");
        model.last_heartbeat[node] = now;
    }
    for op in ops {
        let now = model.now;
        match op {
            Op::Submit { kind, max_attempts } => {
                let job = SubmitJob {
                    kind: KINDS[kind].into(),
                    prompt: Some("p".into()),
                    max_attempts: Some(max_attempts),
                    ..SubmitJob::default()
                };
                let answer = write(&mut conn, |tx| {
                    store::insert_job(
                        tx,
                        now,
                        &sealer(),
                        3,
                        "local",
                        &job,
                        &mut Changes::default(),
                    )
                })
                .expect("insert");
                prop_assert_eq!(answer.id as usize, model.jobs.len() + 1);
                model.jobs.push(MJob {
                    state: JobState::Queued,
                    kind,
                    attempts: 0,
                    max_attempts,
                    token: 0,
                    node: None,
                    expires: 0,
                    run_at: now,
                    ready_at: now,
                    reported: HashMap::new(),
                });
            }
            Op::Lease { node, n } => {
                model.touch(node);
                let leases = write(&mut conn, |tx| {
                    store::touch_node(tx, now, &node_id(node))?;
                    store::lease_for_node(
                        tx,
                        now,
                        &sealer(),
                        TTL,
                        &profile(node),
                        n,
                        &|_| String::new(),
                        &store::Share::OFF,
                    )
                })
                .expect("lease");
                let mut expected: Vec<usize> = (0..model.jobs.len())
                    .filter(|&i| {
                        model.jobs[i].state == JobState::Queued
                            && NODE_KINDS[node].contains(&KINDS[model.jobs[i].kind])
                    })
                    .collect();
                expected.sort_by_key(|&i| (model.jobs[i].ready_at, i));
                expected.truncate(n as usize);
                let got: Vec<usize> = leases.iter().map(|l| l.job_id as usize - 1).collect();
                let mut got_sorted = got.clone();
                got_sorted.sort();
                let mut expected_sorted = expected.clone();
                expected_sorted.sort();
                prop_assert_eq!(got_sorted, expected_sorted);
                for lease in &leases {
                    let job = &mut model.jobs[lease.job_id as usize - 1];
                    job.state = JobState::Leased;
                    job.attempts += 1;
                    job.token += 1;
                    job.node = Some(node);
                    job.expires = now + TTL as i64;
                    prop_assert_eq!(
                        (lease.lease_token, lease.attempt),
                        (job.token, job.attempts)
                    );
                }
            }
            Op::Heartbeat { node } => {
                model.touch(node);
                let held: Vec<HeldLease> = model
                    .jobs
                    .iter()
                    .enumerate()
                    .filter(|(_, j)| j.state == JobState::Leased && j.node == Some(node))
                    .map(|(i, j)| HeldLease {
                        job_id: i as i64 + 1,
                        lease_token: j.token,
                    })
                    .collect();
                let (cancelled, revoked) = write(&mut conn, |tx| {
                    store::touch_node(tx, now, &node_id(node))?;
                    store::renew_leases(tx, now, TTL, &node_id(node), &held)
                })
                .expect("renew");
                prop_assert!(cancelled.is_empty() && revoked.is_empty());
                for held in held {
                    model.jobs[held.job_id as usize - 1].expires = now + TTL as i64;
                }
            }
            Op::Complete {
                job,
                token_offset,
                success,
                retryable,
            } => {
                let Some(m) = model.jobs.get(job).cloned() else {
                    continue;
                };
                let token = m.token + token_offset;
                let node = m.node.unwrap_or(0);
                let outcome = if success {
                    Outcome::Succeeded {
                        output: LlmOutput::default(),
                    }
                } else {
                    Outcome::Failed {
                        error: "boom".into(),
                        retryable,
                    }
                };
                let report = CompleteRequest {
                    node_id: node_id(node),
                    lease_token: token,
                    outcome,
                };
                let result = write(&mut conn, |tx| {
                    store::complete_job(
                        tx,
                        now,
                        &sealer(),
                        Retry {
                            backoff: BACKOFF,
                            unit_random: JITTER,
                        },
                        job as i64 + 1,
                        &report,
                        &mut Changes::default(),
                    )
                });
                let wanted = if success { "succeeded" } else { "failed" };
                let holds = m.state == JobState::Leased && token == m.token;
                if holds {
                    let answer = result.expect("current lease accepted");
                    prop_assert!(!answer.duplicate);
                    let j = &mut model.jobs[job];
                    j.reported.insert(token, (node, wanted));
                    j.state = if success {
                        JobState::Succeeded
                    } else if !retryable || j.attempts >= j.max_attempts {
                        JobState::Dead
                    } else {
                        j.run_at = now + BACKOFF.delay_ms(j.attempts, JITTER) as i64;
                        JobState::Scheduled
                    };
                    prop_assert_eq!(answer.state, j.state);
                } else if m.reported.get(&token) == Some(&(node, wanted)) {
                    prop_assert!(result.expect("duplicate accepted").duplicate);
                } else {
                    prop_assert!(
                        matches!(result, Err(StoreError::StaleLease(_))),
                        "{:?}",
                        result
                    );
                }
            }
            Op::Cancel { job } => {
                let Some(m) = model.jobs.get(job).cloned() else {
                    continue;
                };
                let result = write(&mut conn, |tx| {
                    store::cancel_job(tx, now, job as i64 + 1, &mut Changes::default())
                });
                if m.state.is_terminal() {
                    prop_assert!(matches!(result, Err(StoreError::Conflict(_))));
                } else {
                    prop_assert_eq!(result.expect("cancel"), m.state);
                    model.jobs[job].state = JobState::Cancelled;
                }
            }
            Op::Advance { ms } => {
                model.now += ms as i64;
                let now = model.now;
                write(&mut conn, |tx| {
                    let mut changes = Changes::default();
                    store::mark_lost_nodes(tx, now, LOST_AFTER, None, &mut changes)?;
                    store::reap_expired(tx, now, None, &mut changes)?;
                    store::promote_due(tx, now, &mut changes)
                })
                .expect("tick");
                model.tick();
            }
        }
        check(&conn, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_store_follows_the_lease_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}

#[test]
fn backoff_doubles_with_jitter_and_is_capped() {
    for attempt in 1..10 {
        let full = (2_000u64 << (attempt - 1)).min(60_000);
        assert_eq!(BACKOFF.delay_ms(attempt, 0.0), full / 2);
        assert_eq!(BACKOFF.delay_ms(attempt, 1.0), full);
    }
    assert_eq!(BACKOFF.delay_ms(200, 1.0), 60_000);
}
