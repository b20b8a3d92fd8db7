//! The job store: one SQLite file, one writer thread with group commit, and a
//! pool of reader connections.
//!
//! Every change goes through [`Store::write`], which runs a closure on the
//! writer thread inside a `BEGIN IMMEDIATE` transaction shared with whatever
//! other writes arrived meanwhile (group commit), each in its own savepoint so
//! one failing write never spoils the others. The caller's future resolves only
//! after `COMMIT` returned: what is acknowledged is on disk (`synchronous=FULL`).

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
pub use writer::{AfterCommit, Effect, LeaseSender, WriteCtx, WriterHandle};

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

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    writer: writer::WriterHandle,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
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
        let writer = writer::spawn(conn, after_commit)?;
        Ok(Store {
            writer,
            readers: Arc::new(Mutex::new(Vec::new())),
            path: path.to_path_buf(),
            _checkpointer: checkpointer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
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

    /// Runs `read` on a reader connection off the async runtime.
    pub async fn read<R, F>(&self, read: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => open_connection(&path)?,
            };
            let result = read(&conn);
            readers.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}
