//! The database's health at open: `PRAGMA quick_check` (a damaged file is
//! refused, with what was found and how to restore), and a look at the
//! write-ahead log left by a crash, so the log says when its tail was torn
//! and the database opens at the last valid commit. On PostgreSQL the
//! server recovers and checks its own files: what a coordinator checks at
//! open is that it can write there (the primary, not a standby) and what
//! the server guards its pages with ([`check_postgres`]).

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::StoreError;
use super::sql::{Db, Dialect, args};

/// Most problems `quick_check` reports (it stops there).
const QUICK_CHECK_LIMIT: u32 = 20;

/// Opens the database at `path` as the coordinator starts: logs what the
/// write-ahead log left by a crash holds (before SQLite recovers it), then
/// refuses a damaged file ([`StoreError::Damaged`]).
pub fn open_checked(path: &Path) -> Result<Connection, StoreError> {
    if let Some(tail) = wal_tail(path) {
        log_wal_tail(&tail);
    }
    let conn = super::open_connection(path).map_err(|err| damaged(err, path))?;
    quick_check(&conn, path)?;
    Ok(conn)
}

/// SQLITE_CORRUPT and SQLITE_NOTADB as [`StoreError::Damaged`].
fn damaged(err: StoreError, path: &Path) -> StoreError {
    let sqlite = match &err {
        StoreError::Sqlite(e) | StoreError::Open { source: e, .. } => e,
        _ => return err,
    };
    match sqlite.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
            StoreError::Damaged {
                path: path.to_path_buf(),
                problems: sqlite.to_string(),
            }
        }
        _ => err,
    }
}

/// Runs `PRAGMA quick_check` and refuses a damaged database.
pub fn quick_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let problems: Result<Vec<String>, rusqlite::Error> = conn
        .prepare(&format!("PRAGMA quick_check({QUICK_CHECK_LIMIT})"))
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect());
    let problems = problems.map_err(|err| damaged(err.into(), path))?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    Err(StoreError::Damaged {
        path: path.to_path_buf(),
        problems: problems.join("; ").replace('\n', " "),
    })
}

/// What a PostgreSQL server said at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgHealth {
    /// `server_version`, e.g. `15.8 (Debian 15.8-1)`.
    pub server_version: String,
    /// Whether the cluster checksums its data pages (`initdb
    /// --data-checksums`): without them a flipped page reads as data.
    pub data_checksums: bool,
}

pub const SELECT_PG_HEALTH: &str = "SELECT current_setting('server_version'), current_setting('data_checksums'), pg_is_in_recovery(), current_setting('transaction_read_only')";

/// Checks the PostgreSQL database a coordinator opens: a standby in
/// recovery, or a session that is read-only, is refused (with what to point
/// at instead); pages without checksums are logged.
pub fn check_postgres(db: &dyn Db) -> Result<PgHealth, StoreError> {
    if db.dialect() != Dialect::Postgres {
        return Err(StoreError::Invalid(
            "check_postgres is for PostgreSQL databases; SQLite files are checked by open_checked"
                .into(),
        ));
    }
    let (server_version, checksums, in_recovery, read_only): (String, String, bool, String) = db
        .one(SELECT_PG_HEALTH, args![], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
    if in_recovery || read_only == "on" {
        let why = if in_recovery {
            "the server is a standby in recovery"
        } else {
            "the session is read-only (default_transaction_read_only is on)"
        };
        return Err(StoreError::Invalid(format!(
            "PostgreSQL {server_version} is read-only here: {why}. kobo-coord writes: point it at the primary \
             (with several hosts in the URL, add target_session_attrs=read-write)"
        )));
    }
    let health = PgHealth {
        server_version,
        data_checksums: checksums == "on",
    };
    if !health.data_checksums {
        tracing::warn!(
            server_version = %health.server_version,
            "the PostgreSQL cluster has no data checksums: a damaged page is not detected when read \
             (initdb --data-checksums, or pg_checksums --enable on a stopped cluster)"
        );
    }
    Ok(health)
}

/// What a crash left in the write-ahead log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalTail {
    pub path: PathBuf,
    /// Frames whose salts and checksums are valid, up to the first that is not.
    pub valid_frames: u64,
    /// Of those, the frames of committed transactions (up to the last commit).
    pub committed_frames: u64,
    pub commits: u64,
    /// Bytes after the last valid commit: a torn or uncommitted tail that
    /// SQLite ignores.
    pub dropped_bytes: u64,
}

const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), from `seed`.
fn checksum(data: &[u8], big_endian: bool, seed: (u32, u32)) -> (u32, u32) {
    let (mut s1, mut s2) = seed;
    for pair in data.chunks_exact(8) {
        let word = |at: usize| {
            let b = [pair[at], pair[at + 1], pair[at + 2], pair[at + 3]];
            if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        s1 = s1.wrapping_add(word(0)).wrapping_add(s2);
        s2 = s2.wrapping_add(word(4)).wrapping_add(s1);
    }
    (s1, s2)
}

/// Reads the write-ahead log of the database at `db` (before it is
/// opened): `None` when there is none, or it is empty or not a WAL.
pub fn wal_tail(db: &Path) -> Option<WalTail> {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    let path = PathBuf::from(name);
    let bytes = std::fs::read(&path).ok()?;
    if bytes.len() < WAL_HEADER {
        return None;
    }
    let magic = be32(&bytes, 0);
    if magic & !1 != 0x377f_0682 {
        return None;
    }
    let big_endian = magic & 1 == 1;
    let page_size = be32(&bytes, 8) as usize;
    let salts = (be32(&bytes, 16), be32(&bytes, 20));
    let mut seed = checksum(&bytes[..24], big_endian, (0, 0));
    if seed != (be32(&bytes, 24), be32(&bytes, 28)) || page_size < 512 {
        return None;
    }
    let frame_len = FRAME_HEADER + page_size;
    let (mut valid_frames, mut committed_frames, mut commits) = (0u64, 0u64, 0u64);
    let mut at = WAL_HEADER;
    let mut end_of_commit = WAL_HEADER;
    while at + frame_len <= bytes.len() {
        let frame = &bytes[at..at + frame_len];
        if (be32(frame, 8), be32(frame, 12)) != salts {
            break;
        }
        let sum = checksum(&frame[..8], big_endian, seed);
        let sum = checksum(&frame[FRAME_HEADER..], big_endian, sum);
        if sum != (be32(frame, 16), be32(frame, 20)) {
            break;
        }
        seed = sum;
        valid_frames += 1;
        at += frame_len;
        if be32(frame, 4) != 0 {
            commits += 1;
            committed_frames = valid_frames;
            end_of_commit = at;
        }
    }
    Some(WalTail {
        path,
        valid_frames,
        committed_frames,
        commits,
        dropped_bytes: (bytes.len() - end_of_commit) as u64,
    })
}

/// Logs what the database will recover from its write-ahead log.
pub fn log_wal_tail(tail: &WalTail) {
    let path = tail.path.display();
    if tail.dropped_bytes > 0 {
        tracing::warn!(
            wal = %path,
            commits = tail.commits,
            committed_frames = tail.committed_frames,
            valid_frames = tail.valid_frames,
            dropped_bytes = tail.dropped_bytes,
            "the write-ahead log ends in a torn or uncommitted write: the database opens at its last valid commit \
             (commit {} of the log, frame {}); the {} bytes after it are ignored",
            tail.commits,
            tail.committed_frames,
            tail.dropped_bytes
        );
    } else if tail.commits > 0 {
        tracing::info!(
            wal = %path,
            commits = tail.commits,
            committed_frames = tail.committed_frames,
            "recovering committed transactions from the write-ahead log"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_wal_tail_is_found_and_a_whole_one_is_not() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("t.db");
        let conn = crate::store::open_connection(&db).expect("open");
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (x TEXT);")
            .expect("schema");
        for idx in 0..5 {
            conn.execute("INSERT INTO t VALUES (?1)", [format!("row {idx}")])
                .expect("insert");
        }
        // Copy the WAL while the connection is open (closing checkpoints it).
        let wal = dir.path().join("t.db-wal");
        let copy = dir.path().join("c.db");
        std::fs::copy(&db, &copy).expect("copy db");
        let bytes = std::fs::read(&wal).expect("wal");
        std::fs::write(dir.path().join("c.db-wal"), &bytes).expect("copy wal");
        let whole = wal_tail(&copy).expect("a wal");
        assert_eq!(whole.dropped_bytes, 0, "{whole:?}");
        assert_eq!(whole.commits, 6, "the schema and five inserts: {whole:?}");
        assert_eq!(whole.valid_frames, whole.committed_frames);

        std::fs::write(dir.path().join("c.db-wal"), &bytes[..bytes.len() - 100]).expect("torn wal");
        let torn = wal_tail(&copy).expect("a wal");
        assert_eq!(torn.commits, 5, "{torn:?}");
        assert!(torn.dropped_bytes > 0, "{torn:?}");
        drop(conn);
        let reopened = crate::store::open_connection(&copy).expect("reopen");
        let rows: i64 = reopened
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 4, "SQLite opened at the last valid commit");
        quick_check(&reopened, &copy).expect("healthy");
    }
}
