//! Leasing cost does not grow with queue depth: the lease path walks the
//! partial index `jobs_queued` (one seek per submitter, then one walk per
//! submitter, fair share on), so the SQLite VM steps it takes to lease a job
//! are the same with 100 and with 100,000 jobs queued. (Steps, not seconds:
//! deterministic on a noisy machine. `kobo-bench` measures the time.)

use kobo_protocol::KeyPolicy;
use kobo_protocol::SubmitJob;
use kobo_queue::routing::NodeProfile;
use kobo_queue::store::{self, Changes, Share};
use kobo_queue::tenancy::Tenants;
use rusqlite::{Connection, StatementStatus, TransactionBehavior};

use crate::{sealer, temp_db};

const NOW: i64 = 1_800_000_000_000;

fn node() -> NodeProfile {
    NodeProfile {
        node_id: "tokyo-01".into(),
        region: "ap-northeast-1".into(),
        capabilities: vec!["general_query".into(), "code_generation".into()],
        gpu: false,
        models: vec![],
        max_workers: 8,
    }
}

fn fill(conn: &mut Connection, n: usize) {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("tx");
    let mut changes = Changes::default();
    for idx in 0..n {
        // Mostly the node's kinds, some a kind it cannot run.
        let kind = ["general_query", "code_generation", "translation"][idx % 3];
        let job = SubmitJob {
            kind: kind.into(),
            prompt: Some(format!("job {idx}")),
            priority: (idx % 5) as i32,
            ..SubmitJob::default()
        };
        store::insert_job(
            &tx,
            NOW - n as i64 + idx as i64,
            &sealer(),
            3,
            // Three submitters, one of them with a concurrency limit.
            ["local", "apikey:aaaa", "apikey:bbbb"][idx % 3 / 2 + idx % 2],
            &job,
            &mut changes,
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
}

/// VM steps of leasing `n_leases` jobs one at a time, and the full-scan steps seen.
fn lease_steps(conn: &mut Connection, n_leases: usize) -> (i64, i64) {
    let lease_queries = [
        store::SELECT_QUEUED_KEYS,
        store::SELECT_QUEUED_OF_KEY,
        store::COUNT_LEASED_BY,
        store::SELECT_FOR_GRANT,
        store::GRANT_LEASE,
        store::INSERT_ATTEMPT,
        store::INSERT_EVENT,
    ];
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("tx");
    for sql in lease_queries {
        let stmt = tx.prepare_cached(sql).expect("prepare");
        stmt.reset_status(StatementStatus::VmStep);
        stmt.reset_status(StatementStatus::FullscanStep);
    }
    let tenants = Tenants::default();
    tenants.set_policy(
        "bbbb",
        KeyPolicy {
            weight: 3,
            max_concurrent: Some(1000),
            ..KeyPolicy::default()
        },
    );
    let share = Share {
        tenants: Some(&tenants),
        fair_share: true,
        expected_ms: &|_| 1000.0,
    };
    for _ in 0..n_leases {
        let leases = store::lease_for_node(
            &tx,
            NOW,
            &sealer(),
            15_000,
            &node(),
            1,
            &|_| String::new(),
            &share,
        )
        .expect("lease");
        assert_eq!(leases.len(), 1);
    }
    let mut vm = 0;
    let mut scans = 0;
    for sql in lease_queries {
        let stmt = tx.prepare_cached(sql).expect("prepare");
        vm += stmt.get_status(StatementStatus::VmStep) as i64;
        scans += stmt.get_status(StatementStatus::FullscanStep) as i64;
    }
    tx.commit().expect("commit");
    (vm, scans)
}

#[test]
fn lease_cost_is_flat_from_100_to_100k_queued() {
    let (_small_dir, mut small) = temp_db();
    fill(&mut small, 100);
    let (_big_dir, mut big) = temp_db();
    fill(&mut big, 100_000);

    let (small_steps, small_scans) = lease_steps(&mut small, 20);
    let started = std::time::Instant::now();
    let (big_steps, big_scans) = lease_steps(&mut big, 20);
    let big_time = started.elapsed();
    assert_eq!(
        (small_scans, big_scans),
        (0, 0),
        "no full table scan on the lease path"
    );
    // Index walks are O(log n): allow a few extra b-tree levels, nothing more.
    assert!(
        big_steps as f64 <= small_steps as f64 * 1.2,
        "lease VM steps grew with depth: {small_steps} at 100 queued, {big_steps} at 100k"
    );
    eprintln!(
        "lease VM steps for 20 leases: {small_steps} at 100 queued, {big_steps} at 100k ({big_time:?} in all)"
    );
}

#[test]
fn the_lease_queries_search_the_partial_index() {
    let (_dir, conn) = temp_db();
    for (sql, args) in [
        (store::SELECT_QUEUED_KEYS, 2),
        (store::SELECT_QUEUED_OF_KEY, 3),
    ] {
        let params: Vec<&dyn rusqlite::ToSql> =
            [&"general_query" as &dyn rusqlite::ToSql, &0, &"local"][..args].to_vec();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain")
            .query_map(params.as_slice(), |r| r.get::<_, String>(3))
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("rows");
        let plan = plan.join("\n");
        assert!(
            plan.contains("USING COVERING INDEX jobs_queued")
                || plan.contains("USING INDEX jobs_queued"),
            "{sql}: {plan}"
        );
        assert!(
            !plan.contains("TEMP B-TREE") && !plan.contains("SCAN jobs"),
            "the order comes from the index, no sort or scan: {sql}: {plan}"
        );
    }
}
