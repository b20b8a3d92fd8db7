//! The audit log: append-only rows chained by SHA-256, so that editing or
//! deleting a row shows.

use kobo_protocol::{AuditEntry, AuditVerify};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::StoreError;
use crate::security::sha256_hex;

pub const SELECT_LAST_AUDIT_HASH: &str = "SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1";
pub const INSERT_AUDIT: &str = "INSERT INTO audit_log (at, actor, action, target, outcome, source, request_id, detail, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
pub const SELECT_AUDIT: &str = "SELECT id, at, actor, action, target, outcome, source, request_id, detail, hash FROM audit_log WHERE at >= ?1 ORDER BY id LIMIT ?2";
pub const SELECT_AUDIT_ALL: &str = "SELECT id, at, actor, action, target, outcome, source, request_id, detail, hash FROM audit_log ORDER BY id";

/// The hash of the chain's start.
const GENESIS: &str = "kobo-audit-v1";

/// What to record; `at` and the hash are filled in on append.
#[derive(Debug, Clone, Default)]
pub struct AuditRecord {
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: &'static str,
    pub source: Option<String>,
    pub request_id: Option<String>,
    pub detail: Option<String>,
}

/// The chained hash of one row: every field length-prefixed, so no two
/// different rows hash alike.
fn row_hash(prev: &str, at: i64, r: &AuditRecord) -> String {
    let mut buf = Vec::new();
    let mut push = |field: Option<&str>| match field {
        Some(text) => {
            buf.extend_from_slice(&(text.len() as u64).to_be_bytes());
            buf.extend_from_slice(text.as_bytes());
        }
        None => buf.extend_from_slice(&u64::MAX.to_be_bytes()),
    };
    push(Some(prev));
    push(Some(&at.to_string()));
    push(Some(&r.actor));
    push(Some(&r.action));
    push(r.target.as_deref());
    push(Some(r.outcome));
    push(r.source.as_deref());
    push(r.request_id.as_deref());
    push(r.detail.as_deref());
    sha256_hex(&buf)
}

pub fn append_audit(
    tx: &Transaction<'_>,
    now: i64,
    record: &AuditRecord,
) -> Result<i64, StoreError> {
    let prev: String = tx
        .prepare_cached(SELECT_LAST_AUDIT_HASH)?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or_else(|| GENESIS.to_string());
    let hash = row_hash(&prev, now, record);
    // A plain insert: `RETURNING` builds a temporary table on every run.
    tx.prepare_cached(INSERT_AUDIT)?.execute(params![
        now,
        record.actor,
        record.action,
        record.target,
        record.outcome,
        record.source,
        record.request_id,
        record.detail,
        hash
    ])?;
    Ok(tx.last_insert_rowid())
}

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        outcome: r.get(5)?,
        source: r.get(6)?,
        request_id: r.get(7)?,
        detail: r.get(8)?,
        hash: r.get(9)?,
    })
}

pub fn list_audit(
    conn: &Connection,
    since: i64,
    limit: u32,
) -> Result<Vec<AuditEntry>, StoreError> {
    Ok(conn
        .prepare_cached(SELECT_AUDIT)?
        .query_map(params![since, limit], entry)?
        .collect::<Result<_, _>>()?)
}

/// Recomputes the chain; reports the first row that does not match.
pub fn verify_audit(conn: &Connection) -> Result<AuditVerify, StoreError> {
    let mut stmt = conn.prepare_cached(SELECT_AUDIT_ALL)?;
    let mut rows = stmt.query([])?;
    let mut prev = GENESIS.to_string();
    let mut n = 0u64;
    while let Some(row) = rows.next()? {
        let e = entry(row)?;
        n += 1;
        let outcome: &'static str = match e.outcome.as_str() {
            "ok" => "ok",
            "denied" => "denied",
            _ => "failed",
        };
        let record = AuditRecord {
            actor: e.actor,
            action: e.action,
            target: e.target,
            outcome,
            source: e.source,
            request_id: e.request_id,
            detail: e.detail,
        };
        if row_hash(&prev, e.at, &record) != e.hash || outcome != e.outcome {
            return Ok(AuditVerify {
                rows: n,
                ok: false,
                first_bad_id: Some(e.id),
            });
        }
        prev = e.hash;
    }
    Ok(AuditVerify {
        rows: n,
        ok: true,
        first_bad_id: None,
    })
}
