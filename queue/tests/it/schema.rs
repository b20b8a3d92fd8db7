//! The schema migrates, the connection settings hold, and every query
//! constant prepares (rusqlite has no compile-time check of SQL).

use kobo_queue::store;

use crate::temp_db;

#[test]
fn every_query_prepares_against_the_migrated_schema() {
    let (_dir, conn) = temp_db();
    for sql in store::QUERIES {
        if let Err(err) = conn.prepare(sql) {
            panic!("query does not prepare: {err}\n{sql}");
        }
    }
}

#[test]
fn connection_settings_are_set_and_checked() {
    let (_dir, conn) = temp_db();
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal");
    assert_eq!(journal, "wal");
    let sync: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .expect("sync");
    assert_eq!(sync, 2, "synchronous = FULL");
    let fk: i64 = conn
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .expect("fk");
    assert_eq!(fk, 1);
}

#[test]
fn migrating_twice_changes_nothing_and_views_answer() {
    let (dir, conn) = temp_db();
    drop(conn);
    let mut conn = store::open_connection(&dir.path().join("kobo.db")).expect("reopen");
    store::migrate(&mut conn).expect("migrate again");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, store::MIGRATIONS_APPLIED);
    for view in [
        "v_jobs",
        "v_job_events",
        "v_node_stats",
        "v_audit",
        "v_schedules",
        "v_queue",
        "v_node_metrics_minute",
    ] {
        let n: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {view}"), [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{view}: {e}"));
        assert_eq!(n, 0);
    }
}

#[test]
fn a_newer_schema_is_refused() {
    let (dir, conn) = temp_db();
    conn.execute_batch("PRAGMA user_version = 99")
        .expect("bump");
    drop(conn);
    let mut conn = store::open_connection(&dir.path().join("kobo.db")).expect("reopen");
    let err = store::migrate(&mut conn).expect_err("newer schema");
    assert!(err.to_string().contains("newer"), "{err}");
}

/// PostgreSQL only: migrating again changes nothing (also from two sessions
/// at once, under the advisory lock) and a newer schema is refused.
#[test]
fn postgres_migrations_run_once_and_refuse_a_newer_schema() {
    use crate::backends::{Conn, each_backend};
    use kobo_queue::store::sql::{Dialect, PG_MIGRATIONS_APPLIED, args, migrate_postgres};
    each_backend(|test| {
        if test.dialect() != Dialect::Postgres {
            return;
        }
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let Conn::Postgres(mut pg) = test.connect() else {
                        unreachable!("a PostgreSQL test database")
                    };
                    migrate_postgres(&mut pg).expect("migrate again");
                });
            }
        });
        let Conn::Postgres(mut pg) = test.connect() else {
            unreachable!("a PostgreSQL test database")
        };
        let db: &dyn kobo_queue::store::sql::Db = &*pg;
        let versions: Vec<i64> = db
            .many(
                "SELECT version FROM schema_version ORDER BY version",
                args![],
                |r| r.get(0),
            )
            .expect("versions");
        assert_eq!(versions, (1..=PG_MIGRATIONS_APPLIED).collect::<Vec<_>>());
        db.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, 0)",
            args![PG_MIGRATIONS_APPLIED + 1],
        )
        .expect("pretend a newer kobo-coord migrated");
        let refused = migrate_postgres(&mut pg);
        assert!(
            matches!(refused, Err(store::StoreError::SchemaTooNew { found, .. }) if found == PG_MIGRATIONS_APPLIED + 1),
            "{refused:?}"
        );
    });
}
