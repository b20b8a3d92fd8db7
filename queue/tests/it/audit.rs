//! The audit chain and usage on every backend: appends from two connections
//! at once still chain (PostgreSQL serialises them under an advisory lock),
//! the log is append-only, a forged row is found; usage sums by key, model,
//! node and hour over a window; a key's budget is read from usage.

use std::sync::Barrier;

use kobo_protocol::{AccessRole, Budget, BudgetPeriod, KeyPolicy, UsageGroup, UsageRow};
use kobo_queue::store::sql::{Db, Dialect, args};
use kobo_queue::store::{self, AuditRecord, UsageFilter};
use kobo_queue::tenancy::Tenants;

use crate::backends::{Conn, each_backend};

const NOW: i64 = 1_800_000_000_000;
const HOUR: i64 = 3_600_000;

fn record(actor: &str, n: usize) -> AuditRecord {
    AuditRecord {
        actor: actor.into(),
        action: "key.create".into(),
        target: Some(format!("apikey:{n}")),
        outcome: "ok",
        source: n.is_multiple_of(2).then(|| "127.0.0.1".to_string()),
        request_id: None,
        detail: Some(format!("row {n}")),
    }
}

#[test]
fn audit_rows_chain_when_two_connections_append_at_once() {
    each_backend(|test| {
        const PER_WRITER: usize = 40;
        let start = Barrier::new(2);
        std::thread::scope(|s| {
            for writer in ["alice", "bob"] {
                let start = &start;
                s.spawn(move || {
                    let mut conn = test.connect();
                    start.wait();
                    for n in 0..PER_WRITER {
                        conn.write(|db| {
                            store::append_audit(db, NOW + n as i64, &record(writer, n))
                        })
                        .expect("append");
                    }
                });
            }
        });
        let conn = test.connect();
        let verify = store::verify_audit(conn.db()).expect("verify");
        assert_eq!(verify.rows, 2 * PER_WRITER as u64);
        assert!(verify.ok, "{verify:?}");
        assert_eq!(verify.first_bad_id, None);
        let hashes: Vec<String> = conn
            .db()
            .many("SELECT hash FROM audit_log", args![], |r| r.get(0))
            .expect("hashes");
        let mut distinct = hashes.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), hashes.len(), "no two rows chain alike");
    });
}

/// The writer's group commit runs each write in a savepoint: a write rolled
/// back after appending leaves no row, and the chain stays whole while
/// another connection appends meanwhile (on PostgreSQL the lock taken in
/// the savepoint goes with it; the transaction's next append takes it again
/// and reads the other's row).
#[test]
fn an_append_rolled_back_to_its_savepoint_leaves_the_chain_whole() {
    each_backend(|test| {
        let start = Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut conn = test.connect();
                start.wait();
                for n in 0..20 {
                    conn.write(|db| store::append_audit(db, NOW, &record("other", n)))
                        .expect("append");
                }
            });
            let mut conn = test.connect();
            start.wait();
            for n in 0..10 {
                conn.write(|db| {
                    store::append_audit(db, NOW, &record("group", n))?;
                    db.execute("SAVEPOINT w", args![])?;
                    store::append_audit(db, NOW, &record("undone", n))?;
                    db.execute("ROLLBACK TO SAVEPOINT w", args![])?;
                    db.execute("RELEASE SAVEPOINT w", args![])?;
                    store::append_audit(db, NOW, &record("group", n + 100))
                })
                .expect("group");
            }
        });
        let conn = test.connect();
        let verify = store::verify_audit(conn.db()).expect("verify");
        assert!(verify.ok, "{verify:?}");
        assert_eq!(verify.rows, 40);
        let undone: i64 = conn
            .db()
            .one(
                "SELECT count(*) FROM audit_log WHERE actor = 'undone'",
                args![],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(undone, 0);
    });
}

#[test]
fn audit_rows_list_in_order_and_a_forged_row_is_found() {
    each_backend(|test| {
        let mut conn = test.connect();
        let ids: Vec<i64> = conn
            .write(|db| {
                (0..5)
                    .map(|n| store::append_audit(db, NOW + n as i64 * 10, &record("local", n)))
                    .collect()
            })
            .expect("append");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let listed = store::list_audit(conn.db(), NOW + 10, 2).expect("list");
        assert_eq!(
            listed.iter().map(|e| e.id).collect::<Vec<_>>(),
            ids[1..3].to_vec()
        );
        let e = &listed[0];
        assert_eq!(
            (e.at, e.actor.as_str(), e.outcome.as_str()),
            (NOW + 10, "local", "ok")
        );
        assert_eq!(e.target.as_deref(), Some("apikey:1"));
        assert_eq!(e.source, None);
        assert_eq!(e.detail.as_deref(), Some("row 1"));
        assert_eq!(e.hash.len(), 64);
        assert!(
            store::list_audit(conn.db(), NOW + 1000, 10)
                .expect("list")
                .is_empty()
        );
        let ok = store::verify_audit(conn.db()).expect("verify");
        assert!(ok.ok && ok.rows == 5, "{ok:?}");
        let readable: (String, String) = conn
            .db()
            .one(
                "SELECT at, action FROM v_audit WHERE id = ?1",
                args![ids[1]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("v_audit");
        assert_eq!(
            readable,
            (
                "2027-01-15 08:00:00.010".to_string(),
                "key.create".to_string()
            )
        );

        // Append-only on both backends.
        for sql in [
            "UPDATE audit_log SET detail = 'edited' WHERE id = ?1",
            "DELETE FROM audit_log WHERE id = ?1",
        ] {
            let refused = conn.write(|db| db.execute(sql, args![ids[2]]));
            let err = refused.expect_err(sql).to_string();
            assert!(err.contains("append-only"), "{sql}: {err}");
        }
        // Past the trigger (an operator with the database file), a forged
        // row breaks the chain at that row.
        let bypass = match test.dialect() {
            Dialect::Sqlite => "DROP TRIGGER audit_log_no_update",
            Dialect::Postgres => "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update",
        };
        conn.write(|db| {
            db.execute(bypass, args![])?;
            db.execute(
                "UPDATE audit_log SET detail = 'edited' WHERE id = ?1",
                args![ids[2]],
            )
        })
        .expect("forge");
        let bad = store::verify_audit(conn.db()).expect("verify");
        assert!(!bad.ok);
        assert_eq!(bad.first_bad_id, Some(ids[2]));
        assert_eq!(bad.rows, 3, "verification stops at the first bad row");
    });
}

fn add_usage(db: &dyn Db, hour: i64, key: &str, model: &str, node: &str, tokens: (i64, i64)) {
    db.execute(
        store::ADD_USAGE,
        args![hour, key, model, node, tokens.0, tokens.1, 100i64],
    )
    .expect("add usage");
}

fn row(hour: Option<i64>, key: Option<&str>, name: Option<&str>) -> UsageRow {
    UsageRow {
        hour,
        key: key.map(str::to_string),
        key_name: name.map(str::to_string),
        model: None,
        node: None,
        requests: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        llm_ms: 0,
    }
}

fn insert_key(conn: &mut Conn, id: &str, name: &str, policy: &KeyPolicy) {
    conn.write(|db| {
        store::insert_api_key(
            db,
            NOW,
            id,
            name,
            AccessRole::Submit,
            &[1, 2],
            "local",
            policy,
        )
    })
    .expect("insert key");
}

#[test]
fn usage_sums_by_key_model_node_and_hour_over_a_window() {
    each_backend(|test| {
        let mut conn = test.connect();
        insert_key(&mut conn, "k1", "ci", &KeyPolicy::default());
        let h0 = NOW - NOW.rem_euclid(HOUR);
        conn.write(|db| {
            add_usage(db, h0, "apikey:k1", "llama", "n1", (10, 5));
            add_usage(db, h0, "apikey:k1", "llama", "n1", (1, 1));
            add_usage(db, h0, "apikey:k1", "qwen", "n2", (20, 0));
            add_usage(db, h0 + HOUR, "local", "", "", (7, 3));
            add_usage(db, h0 + 2 * HOUR, "apikey:k1", "qwen", "n1", (2, 2));
            Ok(())
        })
        .expect("usage");
        let db = conn.db();
        let total = store::usage(db, &UsageFilter::default()).expect("total");
        assert_eq!(
            total,
            [UsageRow {
                requests: 5,
                prompt_tokens: 40,
                completion_tokens: 11,
                llm_ms: 500,
                ..row(None, None, None)
            }]
        );
        let by_key = store::usage(
            db,
            &UsageFilter {
                group: vec![UsageGroup::Key],
                ..UsageFilter::default()
            },
        )
        .expect("by key");
        assert_eq!(
            by_key,
            [
                UsageRow {
                    requests: 4,
                    prompt_tokens: 33,
                    completion_tokens: 8,
                    llm_ms: 400,
                    ..row(None, Some("apikey:k1"), Some("ci"))
                },
                UsageRow {
                    requests: 1,
                    prompt_tokens: 7,
                    completion_tokens: 3,
                    llm_ms: 100,
                    ..row(None, Some("local"), None)
                },
            ]
        );
        // One key's usage in the hours overlapping [h0 + 1, h0 + 2h): the
        // first hour counts (it overlaps), the third does not.
        let window = store::usage(
            db,
            &UsageFilter {
                actor: Some("apikey:k1".into()),
                since: Some(h0 + 1),
                until: Some(h0 + 2 * HOUR),
                group: vec![UsageGroup::Hour, UsageGroup::Model, UsageGroup::Node],
            },
        )
        .expect("window");
        let seen: Vec<_> = window
            .iter()
            .map(|r| {
                (
                    r.hour,
                    r.model.as_deref(),
                    r.node.as_deref(),
                    r.requests,
                    r.prompt_tokens + r.completion_tokens,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (Some(h0), Some("llama"), Some("n1"), 2, 17),
                (Some(h0), Some("qwen"), Some("n2"), 1, 20),
            ]
        );
        assert!(
            window
                .iter()
                .all(|r| r.key.is_none() && r.key_name.is_none())
        );
        let nobody = store::usage(
            db,
            &UsageFilter {
                actor: Some("apikey:none".into()),
                ..UsageFilter::default()
            },
        )
        .expect("nobody");
        assert!(nobody.is_empty(), "nothing matched, no row: {nobody:?}");
        // Unknown model and node are '' in the table and none in the rows.
        let local = store::usage(
            db,
            &UsageFilter {
                actor: Some("local".into()),
                group: vec![UsageGroup::Model, UsageGroup::Node],
                ..UsageFilter::default()
            },
        )
        .expect("local");
        assert_eq!(
            (local[0].model.as_deref(), local[0].node.as_deref()),
            (None, None)
        );
        type Readable = (String, Option<String>, Option<String>, i64);
        let readable: Vec<Readable> = db
            .many(
                "SELECT hour, key_name, model, total_tokens FROM v_usage WHERE node IS NULL OR node = 'n2' ORDER BY hour",
                args![],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .expect("v_usage");
        assert_eq!(
            readable,
            [
                (
                    "2027-01-15 08:00".into(),
                    Some("ci".into()),
                    Some("qwen".into()),
                    20
                ),
                ("2027-01-15 09:00".into(), None, None, 10),
            ]
        );
    });
}

#[test]
fn a_budget_is_refused_once_usage_reaches_it() {
    each_backend(|test| {
        let mut conn = test.connect();
        let policy = KeyPolicy {
            budget: Some(Budget {
                tokens: 100,
                period: BudgetPeriod::Day,
            }),
            ..KeyPolicy::default()
        };
        insert_key(&mut conn, "k1", "ci", &policy);
        let tenants = Tenants::default();
        tenants.load(&store::list_api_keys(conn.db()).expect("keys"));
        let hour = NOW - NOW.rem_euclid(HOUR);
        let admit = |conn: &mut Conn| {
            conn.write(|db| tenants.admit(db, "apikey:k1", 1, NOW))
                .expect("admit")
        };
        conn.write(|db| {
            add_usage(db, hour, "apikey:k1", "m", "n1", (60, 39));
            // Yesterday's usage does not count against today's budget.
            add_usage(db, hour - 48 * HOUR, "apikey:k1", "m", "n1", (500, 0));
            Ok(())
        })
        .expect("usage");
        assert_eq!(admit(&mut conn).map(|r| r.code), None, "99 of 100 used");
        conn.write(|db| {
            add_usage(db, hour, "apikey:k1", "m", "n2", (1, 0));
            Ok(())
        })
        .expect("usage");
        let refusal = admit(&mut conn).expect("100 of 100 used");
        assert_eq!(
            (refusal.code, refusal.limit),
            ("budget_exhausted", "budget")
        );
        assert!(refusal.message.contains("ci"), "{}", refusal.message);
        assert!(refusal.retry_after_ms > 0);
        // A submitter that is not a key has no budget.
        let local = conn
            .write(|db| tenants.admit(db, "local", 1, NOW))
            .expect("admit");
        assert!(local.is_none());
    });
}
