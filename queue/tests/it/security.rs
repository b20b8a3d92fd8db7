//! The security tables on every backend: API keys created, verified,
//! updated and revoked; join tokens used once, also by two joins at once;
//! certificates revoked with their node (its leases released); enrollment
//! keys that never pass their quota under concurrent enrollments; nodes
//! lost for long retired.

use std::sync::Barrier;

use kobo_protocol::{
    AccessRole, Budget, BudgetPeriod, KeyPolicy, NodeStatus, PriorityClass, RegisterRequest,
};
use kobo_queue::security::SecretHasher;
use kobo_queue::store::sql::{Db, args};
use kobo_queue::store::{self, Changes, StoreError};

use crate::backends::{Conn, each_backend};

const NOW: i64 = 1_800_000_000_000;

fn hasher() -> SecretHasher {
    SecretHasher::new(&[9; 32])
}

pub(crate) fn register(conn: &mut Conn, node_id: &str) {
    let req = RegisterRequest {
        node_id: node_id.into(),
        instance_id: "i".into(),
        region: "eu-west-2".into(),
        capabilities: vec!["a".into()],
        max_workers: 2,
        gpu: false,
        backend: "sim".into(),
        models: vec![],
        agent_version: "t".into(),
        specialization: None,
        latitude: None,
        longitude: None,
    };
    conn.write(|db| store::register_node(db, NOW, &req, None, &mut Changes::default()))
        .expect("register");
}

fn one_i64(db: &dyn Db, sql: &str, args: &[&dyn kobo_queue::store::sql::Param]) -> Option<i64> {
    db.one(sql, args, |r| r.get(0)).expect(sql)
}

#[test]
fn api_keys_are_created_verified_updated_and_revoked() {
    each_backend(|test| {
        let mut conn = test.connect();
        let limited = KeyPolicy {
            weight: 3,
            class: Some(PriorityClass::Interactive),
            rpm: Some(60),
            tpm: Some(5_000_000_000),
            max_concurrent: Some(4),
            budget: Some(Budget {
                tokens: 9_000_000_000,
                period: BudgetPeriod::Month,
            }),
        };
        let mac = hasher().hash("secret-one");
        conn.write(|db| {
            store::insert_api_key(
                db,
                NOW,
                "k1",
                "ci",
                AccessRole::Submit,
                &mac,
                "local",
                &limited,
            )?;
            store::insert_api_key(
                db,
                NOW + 1,
                "k2",
                "autoscaler",
                AccessRole::Scaler,
                &hasher().hash("secret-two"),
                "apikey:k1",
                &KeyPolicy::default(),
            )
        })
        .expect("insert keys");
        let keys = store::list_api_keys(conn.db()).expect("list");
        assert_eq!(
            keys.iter().map(|k| k.view.id.as_str()).collect::<Vec<_>>(),
            ["k1", "k2"]
        );
        let k1 = &keys[0];
        assert_eq!(k1.view.name, "ci");
        assert_eq!(k1.view.role, AccessRole::Submit);
        assert_eq!(k1.view.created_at, NOW);
        assert_eq!(k1.view.created_by, "local");
        assert_eq!(k1.view.revoked_at, None);
        assert_eq!(k1.view.policy, limited);
        assert_eq!(k1.secret_mac, mac);
        assert!(hasher().verify("secret-one", &k1.secret_mac));
        assert!(!hasher().verify("secret-two", &k1.secret_mac));
        assert_eq!(keys[1].view.role, AccessRole::Scaler);
        assert_eq!(keys[1].view.policy, KeyPolicy::default());

        let relaxed = KeyPolicy {
            weight: 1,
            ..KeyPolicy::default()
        };
        let (updated, unknown) = conn
            .write(|db| {
                Ok((
                    store::update_api_key_policy(db, "k1", &relaxed)?,
                    store::update_api_key_policy(db, "nope", &relaxed)?,
                ))
            })
            .expect("update");
        assert!(updated && !unknown);
        let (first, again, missing) = conn
            .write(|db| {
                Ok((
                    store::revoke_api_key(db, NOW + 5, "k1")?,
                    store::revoke_api_key(db, NOW + 6, "k1")?,
                    store::revoke_api_key(db, NOW + 6, "nope")?,
                ))
            })
            .expect("revoke");
        assert!(first && !again && !missing);
        let keys = store::list_api_keys(conn.db()).expect("list");
        assert_eq!(keys[0].view.policy, relaxed);
        assert_eq!(
            keys[0].view.revoked_at,
            Some(NOW + 5),
            "first revocation kept"
        );
        assert_eq!(keys[1].view.revoked_at, None);

        // A role outside the schema's CHECK is refused on both backends.
        let bad = conn
            .write(|db| db.execute("UPDATE api_keys SET role = 'root' WHERE id = 'k2'", args![]));
        assert!(bad.is_err(), "role CHECK: {bad:?}");
    });
}

#[test]
fn a_join_token_is_used_once_even_by_two_joins_at_once() {
    each_backend(|test| {
        let mut conn = test.connect();
        let mac = hasher().hash("join-secret");
        conn.write(|db| store::insert_token(db, NOW, "t1", "n1", &mac, "local", NOW + 60_000))
            .expect("insert token");
        let row = conn
            .write(|db| store::find_token(db, "t1"))
            .expect("find")
            .expect("the token");
        assert_eq!(row, ("n1".to_string(), mac.clone(), NOW + 60_000, None));
        assert_eq!(
            conn.write(|db| store::find_token(db, "t9")).expect("find"),
            None
        );

        // Two joins with one token, as admin.rs runs them: read the token,
        // refuse it if used, else mark it used.
        let start = Barrier::new(2);
        let joined: Vec<bool> = std::thread::scope(|s| {
            let joins: Vec<_> = (0..2i64)
                .map(|i| {
                    let start = &start;
                    s.spawn(move || {
                        let mut conn = test.connect();
                        start.wait();
                        conn.write(|db| {
                            let (_, _, _, used_at) =
                                store::find_token(db, "t1")?.expect("the token");
                            if used_at.is_some() {
                                return Ok(false);
                            }
                            store::use_token(db, NOW + 1 + i, "t1")
                        })
                        .expect("join")
                    })
                })
                .collect();
            joins.into_iter().map(|j| j.join().expect("join")).collect()
        });
        assert_eq!(
            joined.iter().filter(|&&ok| ok).count(),
            1,
            "exactly one join used the token: {joined:?}"
        );
        let (_, _, _, used_at) = conn
            .write(|db| store::find_token(db, "t1"))
            .expect("find")
            .expect("the token");
        assert!(matches!(used_at, Some(at) if at == NOW + 1 || at == NOW + 2));
        assert!(
            !conn
                .write(|db| store::use_token(db, NOW + 9, "t1"))
                .expect("use")
        );
    });
}

#[test]
fn revoking_a_node_revokes_its_certificates_and_releases_its_leases() {
    each_backend(|test| {
        let mut conn = test.connect();
        register(&mut conn, "n1");
        register(&mut conn, "n2");
        conn.write(|db| {
            store::insert_certificate(db, NOW, "aa01", "n1", NOW + 1000, "join")?;
            store::insert_certificate(db, NOW + 1, "aa02", "n1", NOW + 2000, "renew")?;
            store::insert_certificate(db, NOW, "bb01", "n2", NOW + 1000, "join")
        })
        .expect("certificates");
        let mut valid = store::valid_certificates(conn.db()).expect("valid");
        valid.sort();
        assert_eq!(
            valid,
            [("aa01", "n1"), ("aa02", "n1"), ("bb01", "n2")]
                .map(|(s, n)| (s.to_string(), n.to_string()))
        );
        let (job, _) = crate::fixture::submit_and_lease(&mut conn, "n1");
        let mut changes = Changes::default();
        let (certs, leases) = conn
            .write(|db| store::revoke_node(db, NOW + 10, "n1", &mut changes))
            .expect("revoke");
        assert_eq!((certs, leases), (2, 1));
        assert_eq!(
            store::valid_certificates(conn.db()).expect("valid"),
            [("bb01".to_string(), "n2".to_string())]
        );
        let db = conn.db();
        assert_eq!(
            one_i64(
                db,
                "SELECT revoked_at FROM nodes WHERE node_id = ?1",
                args!["n1"]
            ),
            Some(NOW + 10)
        );
        assert_eq!(
            one_i64(
                db,
                "SELECT revoked_at FROM nodes WHERE node_id = ?1",
                args!["n2"]
            ),
            None
        );
        assert_eq!(
            one_i64(
                db,
                "SELECT revoked_at FROM certificates WHERE serial = ?1",
                args!["aa02"]
            ),
            Some(NOW + 10)
        );
        let state: String = db
            .one("SELECT state FROM jobs WHERE id = ?1", args![job], |r| {
                r.get(0)
            })
            .expect("state");
        assert_eq!(state, "queued", "the revoked node's lease is released");
        let unknown =
            conn.write(|db| store::revoke_node(db, NOW, "ghost", &mut Changes::default()));
        assert!(
            matches!(unknown, Err(StoreError::NodeNotFound(ref n)) if n == "ghost"),
            "{unknown:?}"
        );
    });
}

#[test]
fn enrollment_keys_keep_their_quota_under_concurrent_enrollments() {
    each_backend(|test| {
        let mut conn = test.connect();
        let mac = hasher().hash("enroll-secret");
        conn.write(|db| {
            store::insert_enroll_key(db, NOW, "e1", "gpu-", &mac, "local", Some(NOW + 9), Some(3))?;
            store::insert_enroll_key(db, NOW + 1, "e2", "cpu-", &mac, "local", None, None)
        })
        .expect("insert enroll keys");
        let all = store::enroll_keys(conn.db(), None).expect("list");
        assert_eq!(
            all.iter().map(|k| k.view.id.as_str()).collect::<Vec<_>>(),
            ["e1", "e2"]
        );
        let e1 = &all[0];
        assert_eq!(e1.view.prefix, "gpu-");
        assert_eq!(e1.view.expires_at, Some(NOW + 9));
        assert_eq!(e1.view.max_enrollments, Some(3));
        assert_eq!(e1.view.enrollments, 0);
        assert_eq!(e1.secret_mac, mac);
        assert_eq!(all[1].view.max_enrollments, None);
        assert!(
            store::enroll_keys(conn.db(), Some("zz"))
                .expect("one")
                .is_empty()
        );

        // Eight enrollments at once against a quota of three.
        let start = Barrier::new(8);
        let counted: usize = std::thread::scope(|s| {
            let runs: Vec<_> = (0..8)
                .map(|_| {
                    let start = &start;
                    s.spawn(move || {
                        let mut conn = test.connect();
                        start.wait();
                        conn.write(|db| store::count_enrollment(db, "e1"))
                            .expect("count")
                    })
                })
                .collect();
            runs.into_iter()
                .map(|r| usize::from(r.join().expect("enroll")))
                .sum()
        });
        assert_eq!(counted, 3);
        let e1 = store::enroll_keys(conn.db(), Some("e1"))
            .expect("one")
            .pop()
            .expect("e1");
        assert_eq!(e1.view.enrollments, 3);
        assert!(
            conn.write(|db| store::count_enrollment(db, "e2"))
                .expect("count")
        );

        let (first, again) = conn
            .write(|db| {
                Ok((
                    store::revoke_enroll_key(db, NOW + 5, "e1")?,
                    store::revoke_enroll_key(db, NOW + 6, "e1")?,
                ))
            })
            .expect("revoke");
        assert!(first && !again);
        let e1 = store::enroll_keys(conn.db(), Some("e1")).expect("one");
        assert_eq!(e1[0].view.revoked_at, Some(NOW + 5));
    });
}

#[test]
fn nodes_lost_for_long_are_retired_with_their_certificates() {
    each_backend(|test| {
        let mut conn = test.connect();
        register(&mut conn, "old");
        register(&mut conn, "recent");
        register(&mut conn, "live");
        conn.write(|db| {
            db.execute(
                "UPDATE nodes SET status = 'lost', last_heartbeat_at = ?2 WHERE node_id = ?1",
                args!["old", NOW - 100_000],
            )?;
            db.execute(
                "UPDATE nodes SET status = 'lost', last_heartbeat_at = ?2 WHERE node_id = ?1",
                args!["recent", NOW - 10],
            )?;
            store::insert_certificate(db, NOW, "cc01", "old", NOW + 1000, "join")?;
            store::insert_certificate(db, NOW, "cc02", "old", NOW + 1000, "renew")
        })
        .expect("setup");
        let retirable = conn
            .write(|db| store::retirable_nodes(db, NOW - 1000))
            .expect("retirable");
        assert_eq!(retirable, [("old".to_string(), NOW - 100_000)]);
        let (live, lost, certs) = conn
            .write(|db| {
                Ok((
                    store::live_node_status(db, "live")?,
                    store::live_node_status(db, "old")?,
                    store::retire_node(db, NOW, "old")?,
                ))
            })
            .expect("retire");
        assert_eq!(live.as_deref(), Some(NodeStatus::Active.as_str()));
        assert_eq!(lost, None, "a lost node is not live");
        assert_eq!(certs, 2);
        assert!(
            store::valid_certificates(conn.db())
                .expect("valid")
                .is_empty()
        );
        assert!(
            conn.write(|db| store::retirable_nodes(db, NOW - 1000))
                .expect("retirable")
                .is_empty(),
            "a retired node is not retired again"
        );
        assert_eq!(
            one_i64(
                conn.db(),
                "SELECT retired_at FROM nodes WHERE node_id = ?1",
                args!["old"]
            ),
            Some(NOW)
        );
        let again = conn
            .write(|db| store::revoke_certificates_of(db, NOW + 1, "old"))
            .expect("revoke again");
        assert_eq!(again, 0);
    });
}
