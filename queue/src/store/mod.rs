//! The job store: one database (the embedded SQLite file, or PostgreSQL),
//! one writer thread with group commit, and a pool of reader connections.
//!
//! Every change goes through [`Store::write`], which runs a closure on the
//! writer thread inside a transaction (`BEGIN IMMEDIATE` on SQLite) shared
//! with whatever other writes arrived meanwhile (group commit), each in its
//! own savepoint so one failing write never spoils the others. The caller's
//! future resolves only after `COMMIT` returned: what is acknowledged is on
//! disk (`synchronous=FULL` on SQLite; on PostgreSQL, committed on the
//! primary and, with Patroni's `synchronous_mode`, on its synchronous
//! standby). Store functions take `&dyn sql::Db`, so one body serves both.

mod audit;
pub mod backup;
mod checkpoint;
mod enroll;
mod fleet;
pub mod health;
mod jobs;
mod leases;
mod nodes;
mod observe;
mod scaling;
mod schedules;
mod schema;
mod security;
pub mod sql;
mod timed;
mod usage;
mod views;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::config::Checkpoints;

pub use audit::*;
pub use enroll::*;
pub use fleet::*;
pub use jobs::*;
pub use leases::*;
pub use nodes::*;
pub use observe::*;
pub use scaling::*;
pub use schedules::*;
pub use schema::{MIGRATIONS_APPLIED, PORTED_QUERIES, QUERIES, migrate, open_connection};
pub use security::*;
pub use timed::*;
pub use usage::*;
pub use views::*;
pub use writer::{AfterCommit, Effect, Fence, LeaseSender, WriteCtx, WriterHandle};

/// Milliseconds since the Unix epoch, now, on the coordinator's clock
/// (monotonic once read: see [`crate::clock`]).
pub fn unix_now_ms() -> i64 {
    crate::clock::unix_now_ms()
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {}", pg_error_text(.0))]
    Postgres(#[from] postgres::Error),
    #[error("failed to open database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database setting {pragma} is {actual}, expected {expected}")]
    Pragma {
        pragma: &'static str,
        actual: String,
        expected: &'static str,
    },
    #[error("database schema version {found} is newer than this kobo-coord knows ({known})")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("job {0} not found")]
    JobNotFound(i64),
    #[error("node {0} not found")]
    NodeNotFound(String),
    /// Something else the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The call's lease token is not the job's current one: nothing changed.
    #[error("{0}")]
    StaleLease(String),
    /// The request conflicts with the job's state (e.g. cancelling a finished job).
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this (and the refusal was audited).
    #[error("{0}")]
    Forbidden(String),
    /// The request is well-formed but its content is unusable (e.g. a CSR).
    #[error("{0}")]
    Invalid(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("the store is shut down")]
    Closed,
    #[error("commit failed: {0}")]
    Commit(String),
    /// The disk (or filesystem) holding the database is full: nothing of
    /// the write was kept; writes work again once space is freed.
    #[error("the disk holding the database is full: {0}")]
    DiskFull(String),
    #[error(
        "database {path} is damaged: PRAGMA quick_check found: {problems}. kobo-coord will not serve from it. \
         To restore: stop kobo-coord and run `kobo-coord restore BACKUP --data-dir DIR --force` with your latest \
         `kobo-coord backup` (the damaged database is moved aside); or move kobo.db, kobo.db-wal and kobo.db-shm \
         aside, copy a backup made with `sqlite3 kobo.db \".backup backup.db\"` to kobo.db and start again; or \
         salvage what is readable with `sqlite3 damaged.db .recover | sqlite3 kobo.db`"
    )]
    Damaged { path: PathBuf, problems: String },
    /// The database cannot serve now, and nothing was written: PostgreSQL is
    /// failing over or unreachable, or this coordinator is no longer the
    /// leader. Retrying soon (at the leader) is right.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Over a key's rate limit or budget: nothing was written but the
    /// refusal's audit row.
    #[error("{}", .0.message)]
    Limited(crate::tenancy::Refusal),
}

/// A PostgreSQL error with the server's message: the driver's own text of a
/// server error is only "db error".
fn pg_error_text(err: &postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{err}: {db}"),
        None => err.to_string(),
    }
}

impl StoreError {
    /// Whether the database was unreachable or not writable, rather than
    /// the request wrong: a lost connection, a server shutting down, a
    /// primary demoted to a read-only standby, a deposed leader.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Postgres(err) => match err.code() {
                // Not a server's answer: the connection failed or broke.
                None => true,
                Some(code) => {
                    let code = code.code();
                    // 08: connection exception; 57P: operator intervention
                    // (shutdown, crash); 25006: read-only transaction (a
                    // demoted primary); 53300: too many connections.
                    code.starts_with("08")
                        || code.starts_with("57P")
                        || code == "25006"
                        || code == "53300"
                }
            },
            _ => false,
        }
    }

    /// Whether the write failed because the disk is full (SQLITE_FULL).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull(_) => true,
            StoreError::Sqlite(err) => {
                err.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
            }
            _ => false,
        }
    }
}

/// Where the store keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// The embedded SQLite file (the default: `kobo.db` in the data directory).
    Sqlite(PathBuf),
    /// A PostgreSQL server (`postgres://…`, multi-host URLs and
    /// `target_session_attrs` included).
    Postgres(String),
}

impl Database {
    /// `postgres://…` or `postgresql://…` is PostgreSQL; anything else is
    /// the path of a SQLite file.
    pub fn parse(value: &str) -> Database {
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            Database::Postgres(value.to_string())
        } else {
            Database::Sqlite(PathBuf::from(value))
        }
    }

    /// For logs and errors: the path, or the URL without its password.
    pub fn display(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(url) => redact_password(url),
        }
    }
}

/// Checks a PostgreSQL URL the way the driver will read it; the error names
/// what is wrong.
pub fn check_postgres_url(url: &str) -> Result<String, String> {
    url.parse::<postgres::Config>()
        .map(|_| url.to_string())
        .map_err(|err| format!("invalid PostgreSQL URL {}: {err}", redact_password(url)))
}

/// `postgres://user:secret@h/db` → `postgres://user:***@h/db`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((auth, hosts)) = rest.split_once('@') else {
        return url.to_string();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{hosts}"),
        None => url.to_string(),
    }
}

/// A pool of reader connections of one backend.
enum Readers {
    Sqlite {
        path: PathBuf,
        pool: Mutex<Vec<Connection>>,
    },
    Postgres {
        url: String,
        pool: Mutex<Vec<sql::PgConn>>,
    },
}

/// Most idle reader connections kept (PostgreSQL counts connections).
const MAX_IDLE_READERS: usize = 8;

impl Readers {
    fn read<R>(
        &self,
        read: impl FnOnce(&dyn sql::Db) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        fn put_back<C>(pool: &Mutex<Vec<C>>, conn: C) {
            let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < MAX_IDLE_READERS {
                pool.push(conn);
            }
        }
        match self {
            Readers::Sqlite { path, pool } => {
                let pooled = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let conn = match pooled {
                    Some(conn) => conn,
                    None => open_connection(path)?,
                };
                let result = read(&conn);
                put_back(pool, conn);
                result
            }
            Readers::Postgres { url, pool } => {
                let pooled = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let conn = match pooled {
                    Some(conn) if !conn.is_closed() => conn,
                    _ => sql::PgConn::connect(url)?,
                };
                let result = read(&conn);
                if !conn.is_closed() {
                    put_back(pool, conn);
                }
                result
            }
        }
    }
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    writer: writer::WriterHandle,
    readers: Arc<Readers>,
    database: Database,
    _checkpointer: Option<Arc<checkpoint::Checkpointer>>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, migrates it and
    /// starts the writer thread.
    pub fn open(path: &Path, after_commit: Arc<dyn AfterCommit>) -> Result<Store, StoreError> {
        Store::open_with(path, after_commit, Checkpoints::Internal)
    }

    /// [`Store::open`], with the checkpoints left to another process
    /// (Litestream) when `checkpoints` is [`Checkpoints::External`].
    pub fn open_with(
        path: &Path,
        after_commit: Arc<dyn AfterCommit>,
        checkpoints: Checkpoints,
    ) -> Result<Store, StoreError> {
        let mut conn = open_connection(path)?;
        migrate(&mut conn)?;
        // The checkpoint thread (or the replicator) copies the log into the
        // database instead.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
        let checkpointer = match checkpoints {
            Checkpoints::Internal => Some(checkpoint::spawn(path)?),
            Checkpoints::External => None,
        };
        let writer = writer::spawn(writer::Backend::Sqlite(conn), after_commit)?;
        Ok(Store {
            writer,
            readers: Arc::new(Readers::Sqlite {
                path: path.to_path_buf(),
                pool: Mutex::new(Vec::new()),
            }),
            database: Database::Sqlite(path.to_path_buf()),
            _checkpointer: checkpointer,
        })
    }

    /// Opens the PostgreSQL database at `url`, migrates it (under an
    /// advisory lock: coordinators starting together take turns) and
    /// starts the writer thread; every write transaction runs `fence`
    /// first, when given. Blocking: call it off the async runtime.
    pub fn open_postgres(
        url: &str,
        after_commit: Arc<dyn AfterCommit>,
        fence: Option<Arc<dyn Fence>>,
    ) -> Result<Store, StoreError> {
        let mut conn = sql::PgConn::connect(url)?;
        let pg = health::check_postgres(&conn)?;
        tracing::info!(server_version = %pg.server_version, database = %redact_password(url), "the store is on PostgreSQL");
        sql::migrate_postgres(&mut conn)?;
        drop(conn);
        let writer = writer::spawn(
            writer::Backend::Postgres(Box::new(writer::PgWriter::new(url, fence)?)),
            after_commit,
        )?;
        Ok(Store {
            writer,
            readers: Arc::new(Readers::Postgres {
                url: url.to_string(),
                pool: Mutex::new(Vec::new()),
            }),
            database: Database::Postgres(url.to_string()),
            _checkpointer: None,
        })
    }

    /// Checks and migrates the PostgreSQL database at `url` without opening
    /// a store: before a coordinator campaigns for leadership (its tables
    /// must exist). Blocking.
    pub fn prepare_postgres(url: &str) -> Result<(), StoreError> {
        let mut conn = sql::PgConn::connect(url)?;
        health::check_postgres(&conn)?;
        sql::migrate_postgres(&mut conn)
    }

    /// Where the store keeps its data.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Runs `work` on the writer thread in a group-committed transaction and
    /// resolves once it is durable.
    pub async fn write<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        self.writer.write(work).await
    }

    /// Runs `read` on a reader connection, on this thread: for start-up,
    /// before the runtime serves (never on the async runtime's threads).
    pub fn read_blocking<R>(
        &self,
        read: impl FnOnce(&dyn sql::Db) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.readers.read(read)
    }

    /// Runs `read` on a reader connection off the async runtime.
    pub async fn read<R, F>(&self, read: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&dyn sql::Db) -> Result<R, StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.read(read))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}
