//! An online copy of the database while the coordinator writes to it
//! (SQLite's backup API, from a connection of its own), and the checks a
//! copy gets before anyone relies on it.

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::{StoreError, open_connection};

/// How long a copy retries a source that is busy (a WAL recovery by
/// another process) before giving up.
const BUSY_PATIENCE: Duration = Duration::from_secs(10);
const BUSY_PAUSE: Duration = Duration::from_millis(50);

/// Most problems `integrity_check` reports.
const INTEGRITY_CHECK_LIMIT: u32 = 20;

/// Copies the live database `src` to the new file `dest`, consistent as of
/// one moment: the copy runs in one step, inside one read transaction, so
/// every commit before it is in the copy and none after. A reader in WAL
/// mode blocks neither kobo's writer nor its PASSIVE checkpoints (which stop
/// at the copy's snapshot). The copy is left in rollback-journal mode, one
/// self-contained file; the coordinator that opens it turns WAL back on.
pub fn copy_online(src: &Path, dest: &Path) -> Result<(), StoreError> {
    if !src.exists() {
        return Err(StoreError::NotFound(format!(
            "no database at {}",
            src.display()
        )));
    }
    let source = open_connection(src)?;
    let mut target = Connection::open(dest).map_err(|source| StoreError::Open {
        path: dest.to_path_buf(),
        source,
    })?;
    {
        let backup = Backup::new(&source, &mut target)?;
        let deadline = std::time::Instant::now() + BUSY_PATIENCE;
        loop {
            match backup.step(-1)? {
                StepResult::Done => break,
                StepResult::More => continue,
                StepResult::Busy | StepResult::Locked if std::time::Instant::now() < deadline => {
                    std::thread::sleep(BUSY_PAUSE)
                }
                other => {
                    return Err(StoreError::Commit(format!(
                        "copying {}: the database stayed busy ({other:?})",
                        src.display()
                    )));
                }
            }
        }
    }
    let mode: String = target.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(StoreError::Pragma {
            pragma: "journal_mode",
            actual: mode,
            expected: "delete",
        });
    }
    Ok(())
}

/// What a copied database holds, read through a read-only connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFacts {
    /// `PRAGMA user_version`: the migrations applied.
    pub schema_version: i64,
    pub jobs: i64,
}

/// Runs `PRAGMA integrity_check` on the database file `path` (read-only:
/// the file is not changed) and reads its schema version and job count; a
/// damaged file is [`StoreError::Damaged`].
pub fn check_copy(path: &Path) -> Result<CopyFacts, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let damaged = |problems: String| StoreError::Damaged {
        path: path.to_path_buf(),
        problems,
    };
    let problems: Result<Vec<String>, rusqlite::Error> = conn
        .prepare(&format!("PRAGMA integrity_check({INTEGRITY_CHECK_LIMIT})"))
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect());
    let problems = problems.map_err(|err| damaged(err.to_string()))?;
    if problems != ["ok"] {
        return Err(damaged(problems.join("; ").replace('\n', " ")));
    }
    let schema_version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let jobs: i64 = conn
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .map_err(|err| damaged(format!("no jobs table: {err}")))?;
    Ok(CopyFacts {
        schema_version,
        jobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_one_checked_file_and_a_damaged_copy_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("kobo.db");
        let mut conn = open_connection(&db).expect("open");
        super::super::migrate(&mut conn).expect("migrate");
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")
            .expect("no autocheckpoint");
        let copy = dir.path().join("copy.db");
        copy_online(&db, &copy).expect("copy");
        let facts = check_copy(&copy).expect("check");
        assert_eq!(facts.schema_version, super::super::MIGRATIONS_APPLIED);
        assert_eq!(facts.jobs, 0);
        assert!(!dir.path().join("copy.db-wal").exists());

        let mut bytes = std::fs::read(&copy).expect("read copy");
        let page = 4096.min(bytes.len() / 2);
        for byte in &mut bytes[page..page + 64] {
            *byte ^= 0xff;
        }
        std::fs::write(&copy, &bytes).expect("damage");
        assert!(
            matches!(check_copy(&copy), Err(StoreError::Damaged { .. })),
            "a damaged copy is refused"
        );
    }
}
