//! The backends a store test runs on: every test body gets a fresh SQLite
//! database and, when `KOBO_TEST_POSTGRES` names a PostgreSQL server (an
//! admin URL such as `postgres://postgres@127.0.0.1:5432/postgres`), a fresh
//! PostgreSQL database on it too, dropped afterwards.

use std::sync::atomic::{AtomicU32, Ordering};

use kobo_queue::store::sql::{Db, Dialect, PgConn, migrate_postgres};
use kobo_queue::store::{self, StoreError};

/// The variable naming the PostgreSQL server the tests may use.
pub(crate) const POSTGRES_ENV: &str = "KOBO_TEST_POSTGRES";

/// One fresh, migrated database.
pub(crate) enum TestDb {
    Sqlite {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    },
    Postgres {
        admin: String,
        name: String,
        url: String,
    },
}

/// A connection of a [`TestDb`], each its own session.
pub(crate) enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<PgConn>),
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kobo.db");
        let mut conn = store::open_connection(&path).expect("open");
        store::migrate(&mut conn).expect("migrate");
        TestDb::Sqlite { _dir: dir, path }
    }

    pub(crate) fn postgres(admin: &str) -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kobo_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = PgConn::connect(admin).expect("connect to KOBO_TEST_POSTGRES");
        // One statement per call: neither may run in a transaction block.
        conn.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .expect("drop database");
        conn.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        let url = with_database(admin, &name);
        let mut conn = PgConn::connect(&url).expect("connect to the test database");
        migrate_postgres(&mut conn).expect("migrate");
        TestDb::Postgres {
            admin: admin.to_string(),
            name,
            url,
        }
    }

    /// The URL of a PostgreSQL test database (for a session of its own).
    pub(crate) fn url(&self) -> Option<&str> {
        match self {
            TestDb::Sqlite { .. } => None,
            TestDb::Postgres { url, .. } => Some(url),
        }
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            TestDb::Sqlite { .. } => Dialect::Sqlite,
            TestDb::Postgres { .. } => Dialect::Postgres,
        }
    }

    /// A new connection (a new session: for tests of concurrent writers).
    pub(crate) fn connect(&self) -> Conn {
        match self {
            TestDb::Sqlite { path, .. } => {
                Conn::Sqlite(store::open_connection(path).expect("open"))
            }
            TestDb::Postgres { url, .. } => {
                Conn::Postgres(Box::new(PgConn::connect(url).expect("connect")))
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { admin, name, .. } = self
            && let Ok(mut conn) = PgConn::connect(admin)
        {
            let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

impl Conn {
    /// Runs `work` in a write transaction (SQLite's `BEGIN IMMEDIATE`, as
    /// the writer thread does) and commits it if it succeeded.
    pub(crate) fn write<R>(
        &mut self,
        work: impl FnOnce(&dyn Db) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        match self {
            Conn::Sqlite(conn) => {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let out = work(&tx)?;
                tx.commit()?;
                Ok(out)
            }
            Conn::Postgres(conn) => {
                let tx = conn.transaction()?;
                let out = work(&tx)?;
                tx.commit()?;
                Ok(out)
            }
        }
    }

    /// The connection outside any transaction, for reads.
    pub(crate) fn db(&self) -> &dyn Db {
        match self {
            Conn::Sqlite(conn) => conn,
            Conn::Postgres(conn) => &**conn,
        }
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |at| at + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

/// A fresh PostgreSQL database when `KOBO_TEST_POSTGRES` names a server;
/// otherwise `None`, and the skip is printed with `what` the test needs it for.
pub(crate) fn postgres_only(what: &str) -> Option<TestDb> {
    match std::env::var(POSTGRES_ENV) {
        Ok(admin) if !admin.is_empty() => Some(TestDb::postgres(&admin)),
        _ => {
            eprintln!("{POSTGRES_ENV} is not set: skipping {what} (PostgreSQL only)");
            None
        }
    }
}

/// Runs `test` on a fresh SQLite database and, when `KOBO_TEST_POSTGRES` is
/// set, on a fresh PostgreSQL database; the panic names the backend.
pub(crate) fn each_backend(test: impl Fn(&TestDb)) {
    let mut backends = vec![TestDb::sqlite()];
    match std::env::var(POSTGRES_ENV) {
        Ok(admin) if !admin.is_empty() => backends.push(TestDb::postgres(&admin)),
        _ => eprintln!("{POSTGRES_ENV} is not set: running on SQLite only"),
    }
    for db in &backends {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(db)));
        if let Err(panic) = run {
            eprintln!("failed on {:?}", db.dialect());
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn database_names_are_replaced_in_urls() {
    assert_eq!(
        with_database("postgres://u@h:5/postgres?sslmode=disable", "t1"),
        "postgres://u@h:5/t1?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://u@h:5", "t1"),
        "postgres://u@h:5/t1"
    );
}
